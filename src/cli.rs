//! The command line: each command a thin call into the library.
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use migration::{Migrator, MigratorTrait};

use crate::{
    config::Config,
    db,
    domain::EmailAddress,
    secrets,
    services::{
        privacy::{self, CLI_ACTOR},
        purge,
        suppression::{self, ALL_LISTS, Reason},
    },
    startup,
    state::AppState,
};

#[derive(Debug, Parser)]
#[command(
    name = "listguard",
    version,
    about = "Newsletter subscription and suppression-list service"
)]
pub struct Cli {
    /// Configuration file (TOML). Every key can also be set as LISTGUARD_<SECTION>__<KEY>.
    #[arg(long, global = true, env = "LISTGUARD_CONFIG")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP, run the outbox workers and the scheduler (migrates on start).
    Serve,
    /// Database migrations.
    Migrate {
        #[command(subcommand)]
        action: Option<MigrateAction>,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Secrets.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Run the retention purge now.
    Purge {
        /// Only count what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// The suppression list.
    Suppress {
        #[command(subcommand)]
        action: SuppressAction,
    },
    /// A person's data: export or erase (data-subject rights).
    Subscriber {
        #[command(subcommand)]
        action: SubscriberAction,
    },
    /// Mailchimp sync.
    Mailchimp {
        #[command(subcommand)]
        action: MailchimpAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum MailchimpAction {
    /// Register the signed audience-webhook URL of a list at Mailchimp.
    RegisterWebhook {
        #[arg(long)]
        list: String,
    },
    /// Compare a list with its Mailchimp audience and repair drift.
    Reconcile {
        #[arg(long)]
        list: String,
        /// Only report the drift; change neither side.
        #[arg(long)]
        dry_run: bool,
    },
    /// The outbox and sync state: pending, in flight, dead letters.
    Status {
        /// One list; all mapped lists when absent.
        #[arg(long)]
        list: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubscriberAction {
    /// Print everything held about the address, as one JSON document.
    Export { email: String },
    /// Erase everything held about the address, queue its removal at
    /// Mailchimp and suppress it on all lists; prints the receipt.
    Erase { email: String },
}

#[derive(Debug, Subcommand)]
pub enum SuppressAction {
    /// Add (or renew) an entry.
    Add {
        email: String,
        /// One list; all lists when absent.
        #[arg(long)]
        list: Option<String>,
        /// unsubscribed, bounce, complaint, blocked, manual or erased.
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// Show whether the address is suppressed, subscribed and mailable.
    Check {
        email: String,
        /// The list to check for; any list when absent.
        #[arg(long)]
        list: Option<String>,
    },
    /// Remove a mistaken entry (one list's, or all of the address's).
    Remove {
        email: String,
        #[arg(long)]
        list: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum MigrateAction {
    /// Apply every pending migration (the default).
    Up,
    /// Revert the last migration.
    Down {
        /// How many migrations to revert.
        #[arg(long, default_value_t = 1)]
        steps: u32,
    },
    /// List applied and pending migrations.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Print a fresh token-signing key and hash key, as configuration lines,
    /// and a signing secret for an outbound webhook endpoint.
    Generate,
}

impl Cli {
    async fn state(&self) -> anyhow::Result<AppState> {
        let config = Config::load(self.config.as_deref())?;
        startup::build_state(config, &startup::BuildOptions::default()).await
    }

    async fn suppress(&self, action: &SuppressAction) -> anyhow::Result<()> {
        let state = self.state().await?;
        let parse =
            |e: &str| EmailAddress::parse(e).map_err(|e| anyhow::anyhow!("the address {e}"));
        let known = |l: &Option<String>| -> anyhow::Result<()> {
            match l {
                Some(l) if state.config.list(l).is_none() => {
                    anyhow::bail!("no list {l:?} is configured")
                }
                _ => Ok(()),
            }
        };
        match action {
            SuppressAction::Add {
                email,
                list,
                reason,
            } => {
                known(list)?;
                let email = parse(email)?;
                let reason = Reason::parse(reason)
                    .ok_or_else(|| anyhow::anyhow!("unknown reason {reason:?}"))?;
                let scope = list.clone().unwrap_or_else(|| ALL_LISTS.to_string());
                suppression::add_by_admin(&state, &email, &scope, reason).await?;
                println!("suppressed for {scope} ({})", reason.as_str());
            }
            SuppressAction::Check { email, list } => {
                known(list)?;
                let hash = state.keys.hasher.hash(&parse(email)?);
                let r = suppression::check_many(&state.db, list.as_deref(), &[hash], state.now())
                    .await?
                    .remove(0);
                println!("suppressed  {}", r.suppressed);
                if let (Some(reason), Some(exp)) = (&r.reason, r.expires_at) {
                    println!("reason      {reason}");
                    println!("expires_at  {}", exp.to_rfc3339());
                }
                println!("subscribed  {}", r.subscribed);
                println!("mailable    {}", r.mailable());
            }
            SuppressAction::Remove { email, list } => {
                known(list)?;
                let hash = state.keys.hasher.hash(&parse(email)?);
                let n = suppression::remove(&state.db, &hash, list.as_deref()).await?;
                if n == 0 {
                    anyhow::bail!("no such entry");
                }
                println!("removed {n} entr{}", if n == 1 { "y" } else { "ies" });
            }
        }
        Ok(())
    }

    async fn subscriber(&self, action: &SubscriberAction) -> anyhow::Result<()> {
        let state = self.state().await?;
        let parse =
            |e: &str| EmailAddress::parse(e).map_err(|e| anyhow::anyhow!("the address {e}"));
        match action {
            SubscriberAction::Export { email } => {
                let email = parse(email)?;
                let doc = privacy::export(&state, &email, CLI_ACTOR)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("nothing is held about this address"))?;
                println!("{}", serde_json::to_string_pretty(&doc)?);
            }
            SubscriberAction::Erase { email } => {
                let email = parse(email)?;
                let receipt = privacy::erase(&state, &email, CLI_ACTOR).await?;
                println!("{}", serde_json::to_string_pretty(&receipt)?);
            }
        }
        Ok(())
    }

    async fn mailchimp(&self, action: &MailchimpAction) -> anyhow::Result<()> {
        let state = self.state().await?;
        match action {
            MailchimpAction::RegisterWebhook { list } => {
                let url = crate::mailchimp::webhook::register(&state, list).await?;
                println!("registered {url}");
            }
            MailchimpAction::Reconcile { list, dry_run } => {
                crate::mailchimp::reconcile::run_cli(&state, list, *dry_run).await?;
            }
            MailchimpAction::Status { list } => {
                crate::mailchimp::sync::print_status(&state, list.as_deref()).await?;
            }
        }
        Ok(())
    }

    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Keys {
                action: KeysAction::Generate,
            } => {
                let (token_key, hash_key) = secrets::generate();
                println!("[secrets]");
                println!("token_keys = [\"{token_key}\"]");
                println!("hash_key = \"{hash_key}\"");
                let webhook = crate::crypto::b64_std_encode(&crate::crypto::random_bytes(32));
                println!("# for an endpoint under [[webhooks]]:");
                println!("# secret = \"whsec_{webhook}\"");
                Ok(())
            }
            Command::Openapi => {
                println!("{}", startup::spec_json().await?);
                Ok(())
            }
            Command::Serve => {
                let config = Config::load(self.config.as_deref())?;
                let app = startup::Application::build(config).await?;
                app.run_until_stopped().await
            }
            Command::Purge { dry_run } => {
                let state = self.state().await?;
                let verb = if dry_run { "would delete" } else { "deleted" };
                let report = purge::purge(&state, dry_run, |class, n| {
                    if !dry_run {
                        eprintln!("purge: {class}: {n} more");
                    }
                })
                .await?;
                for (class, n) in report.rows() {
                    println!("{class:<22} {verb} {n}");
                }
                Ok(())
            }
            Command::Suppress { ref action } => self.suppress(action).await,
            Command::Subscriber { ref action } => self.subscriber(action).await,
            Command::Mailchimp { ref action } => self.mailchimp(action).await,
            Command::Migrate { action } => {
                let config = Config::load(self.config.as_deref())?;
                let conn = db::connect(&config.database).await?;
                match action.unwrap_or(MigrateAction::Up) {
                    MigrateAction::Up => {
                        let pending = Migrator::get_pending_migrations(&conn).await?.len();
                        Migrator::up(&conn, None).await?;
                        println!("applied {pending} migration(s)");
                    }
                    MigrateAction::Down { steps } => {
                        Migrator::down(&conn, Some(steps)).await?;
                        println!("reverted {steps} migration(s)");
                    }
                    MigrateAction::Status => {
                        for m in Migrator::get_applied_migrations(&conn).await? {
                            println!("applied  {}", m.name());
                        }
                        for m in Migrator::get_pending_migrations(&conn).await? {
                            println!("pending  {}", m.name());
                        }
                    }
                }
                Ok(())
            }
        }
    }
}
