//! `stratus`: the control plane in one binary.

mod commands;
mod serving;
mod tls;
mod wiring;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "stratus", version, about = "Control plane for VPS providers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process: REST API, controller and a node agent on
    /// libvirt's test driver, state in SQLite under the data directory.
    Up(commands::UpArgs),
    /// The REST API only (controller and agents run elsewhere).
    Api(commands::ApiArgs),
    /// The controller only.
    Controller(commands::ControllerArgs),
    /// The node agent of one hypervisor.
    Agent(commands::AgentArgs),
    /// The authoritative DNS server of the pools' reverse zones (`rdns:`
    /// of the configuration; `rdns.listen` must be set).
    Dns(commands::DnsArgs),
    /// Issues a new operator (admin) token and prints it.
    AdminToken(commands::AdminTokenArgs),
    /// Certificates for the mutual TLS between the controller and the agents.
    Tls(commands::TlsArgs),
    /// Prints the CustomResourceDefinitions (YAML) of every kind.
    Crds,
    /// Checks a configuration file and prints it with defaults filled in.
    CheckConfig {
        /// The YAML configuration file.
        file: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Crds => {
            print!("{}", commands::crds_yaml()?);
            Ok(())
        }
        Command::Tls(args) => commands::tls(args),
        Command::CheckConfig { file } => {
            let config = wiring::load_config(Some(&file))?;
            print!("{}", serde_yaml::to_string(&config)?);
            Ok(())
        }
        command => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                match command {
                    Command::Up(args) => commands::up(args).await,
                    Command::Api(args) => commands::api(args).await,
                    Command::Controller(args) => commands::controller(args).await,
                    Command::Agent(args) => commands::agent(args).await,
                    Command::Dns(args) => commands::dns(args).await,
                    Command::AdminToken(args) => commands::admin_token(args).await,
                    Command::Crds | Command::Tls(_) | Command::CheckConfig { .. } => Ok(()),
                }
            })
        }
    }
}
