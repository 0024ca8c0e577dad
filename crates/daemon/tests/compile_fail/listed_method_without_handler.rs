//! A method added to the list, with no handler: the table the daemon builds
//! from the list (`handler_table!`, as in `dispatch/mod.rs`) refuses it.

mod methods {
    pub use banger_proto::methods::Ping;

    banger_proto::declare_methods! {
        /// A new method that nobody wrote a handler for.
        VmFly = "vm.fly": banger_proto::methods::NoParams => banger_proto::methods::NoParams,
    }
}

mod table {
    use crate::methods;

    banger_daemon::handler_table! {
        Ping = "ping": banger_proto::methods::NoParams => banger_proto::daemon::PingResult,
        VmFly = "vm.fly": banger_proto::methods::NoParams => banger_proto::methods::NoParams,
    }
}

fn main() {
    let _ = table::METHODS;
}
