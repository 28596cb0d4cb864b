//! The workflow loader: any TOML text, parsed and checked against a client
//! with one (scripted) provider. Nothing runs.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use dspex_client::{Client, ClientConfig, ScriptedLm};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    client: Client,
    base: PathBuf,
    _runtime: tokio::runtime::Runtime,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let client = runtime.block_on(async {
            let client = Client::from_config(&ClientConfig::default())
                .await
                .expect("client");
            client
                .add_scripted("lm", ScriptedLm::replies(["[[ ## answer ## ]]\nA"]))
                .await
                .expect("scripted provider");
            client
        });
        // An empty directory: template paths in a file resolve to nothing.
        let base = std::env::temp_dir().join(format!("dspex-fuzz-workflow-{}", std::process::id()));
        std::fs::create_dir_all(&base).expect("base directory");
        Fixture {
            client,
            base,
            _runtime: runtime,
        }
    })
}

fuzz_target!(|data: &str| {
    let fixture = fixture();
    let _guard = fixture._runtime.enter();
    match dspex_workflow::declarative::parse(
        data,
        "fuzz.toml",
        &fixture.base,
        &fixture.client,
        None,
    ) {
        Ok(_) => {}
        Err(error) => assert!(!error.to_string().is_empty()),
    }
});
