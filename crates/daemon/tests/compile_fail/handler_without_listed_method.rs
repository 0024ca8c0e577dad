//! A handler for a method that is not in the list: there is no such method
//! type, and one cannot be made outside the list (`Method` is sealed).

use banger_daemon::dispatch::{Handler, RequestCtx, RpcError};
use banger_proto::methods::{Method, NoParams};

impl Handler for banger_proto::methods::MethodOutsideTheList {
    async fn handle(_: RequestCtx, _: NoParams) -> Result<NoParams, RpcError> {
        Ok(NoParams)
    }
}

/// A home-made method type, outside the list.
enum HomeMade {}

impl Method for HomeMade {
    const NAME: &'static str = "vm.fly";
    type Params = NoParams;
    type Result = NoParams;
}

impl Handler for HomeMade {
    async fn handle(_: RequestCtx, _: NoParams) -> Result<NoParams, RpcError> {
        Ok(NoParams)
    }
}

fn main() {}
