use banger_proto::Request;
use serde_json::Value;

use super::print_json;
use crate::CliError;
use crate::args::RpcArgs;
use crate::daemon_ctl::{DaemonTarget, ensure_daemon};

pub(crate) fn run(target: &DaemonTarget, args: &RpcArgs) -> Result<(), CliError> {
    let params = match &args.params {
        None => Value::Null,
        Some(text) => serde_json::from_str(text)
            .map_err(|e| CliError::BadParams(format!("params are not valid json: {e}")))?,
    };
    let mut request = Request::new(args.method.clone(), params);
    request.op_id = args.op_id.clone();
    let mut conn = ensure_daemon(target)?;
    let result = conn.client.call_raw(request)?;
    print_json(&result)
}
