//! The method list and the daemon's handlers cannot drift apart: a listed
//! method without a handler, or a handler for a method that is not listed,
//! does not compile. Each case under `tests/compile_fail/` must fail with
//! the errors pinned in its `.stderr` (regenerate them with
//! `TRYBUILD=overwrite cargo test -p banger-daemon --test compile_fail`
//! after a toolchain change, and review the diff).

#[test]
fn the_method_list_and_the_handlers_cannot_drift() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/compile_fail/*.rs");
}
