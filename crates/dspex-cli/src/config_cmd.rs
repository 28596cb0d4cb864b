//! `dspex config check`: validate and print the effective config.

use std::path::Path;

use crate::common::{self, Failure};

#[derive(clap::Subcommand, Debug, Clone, Copy)]
pub(crate) enum ConfigCommand {
    /// Validate the config and print the effective values (secrets redacted).
    Check,
}

pub(crate) fn run(path: Option<&Path>, command: ConfigCommand) -> Result<(), Failure> {
    match command {
        ConfigCommand::Check => {
            let (loader, config) = common::load_config(path)?;
            let source = match loader.file() {
                Some(file) => file.display().to_string(),
                None => "no file; providers from the environment".to_owned(),
            };
            common::err(&format!("config OK ({source})"));
            let text = toml::to_string_pretty(&config).map_err(Failure::usage)?;
            common::out(&text);
            Ok(())
        }
    }
}
