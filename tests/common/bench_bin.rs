//! The `ringlb-bench` binary for integration tests: built by this package (its
//! sources are in benches/ringlb-bench, behind the default feature `bench`), so
//! cargo hands its path over as `CARGO_BIN_EXE_ringlb-bench`.
//! `RINGLB_BENCH_BIN` overrides it (e.g. a release build).

/// Path to `ringlb-bench`. A `&str`, like `env!("CARGO_BIN_EXE_ringlb")`.
pub fn ringlb_bench() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("RINGLB_BENCH_BIN").unwrap_or_else(|_| {
            match option_env!("CARGO_BIN_EXE_ringlb-bench") {
                Some(path) => path.to_owned(),
                None => {
                    panic!("ringlb-bench is not built: the tests need the default feature `bench`")
                }
            }
        })
    })
}
