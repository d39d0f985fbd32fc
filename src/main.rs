use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    listguard::telemetry::init_from_env();
    let cli = listguard::cli::Cli::parse();
    match cli.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "listguard failed");
            eprintln!("listguard: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
