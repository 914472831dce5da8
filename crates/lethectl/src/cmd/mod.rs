//! One module per subcommand group; each exposes its clap arguments and a `run` function
//! returning the process exit code.

pub mod world;
