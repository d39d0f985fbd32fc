//! Building and running the application. `Application::build` binds the port
//! (port 0 in tests) and exposes it; `run_until_stopped` serves until a signal.
use std::{sync::Arc, time::Duration};

use poem::{
    EndpointExt, Route, Server, endpoint::BoxEndpoint, listener::TcpAcceptor,
    middleware::CatchPanic,
};

use crate::{
    api,
    clock::{SharedClock, SystemClock},
    config::Config,
    db,
    http::{AllowTable, Plumbing, panic_response},
    mail::{self, MailTransport},
    outbox::mail_worker,
    scheduler, secrets, shutdown,
    state::{AppState, State},
};

/// Knobs the tests turn.
pub struct BuildOptions {
    pub clock: SharedClock,
    /// Run the outbox workers and the scheduler inside `run_until_stopped`.
    /// Tests turn this off and step the workers themselves.
    pub background_workers: bool,
    /// A mail transport other than the configured one.
    pub mailer: Option<Arc<dyn MailTransport>>,
    /// Point `server.public_url` at the bound port (tests bind port 0).
    pub public_url_from_port: bool,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            background_workers: true,
            mailer: None,
            public_url_from_port: false,
        }
    }
}

pub struct Application {
    port: u16,
    state: AppState,
    listener: tokio::net::TcpListener,
    route: BoxEndpoint<'static>,
    background_workers: bool,
}

/// Connects, migrates, resolves secrets: the state every part shares.
pub async fn build_state(config: Config, options: &BuildOptions) -> anyhow::Result<AppState> {
    config.validate()?;
    config.warn_about_unknown_keys();
    let config = Arc::new(config);
    let db = db::connect(&config.database).await?;
    db::migrate(&db).await?;
    let keys = secrets::load(&config, &db).await?;
    let mailer = match &options.mailer {
        Some(m) => m.clone(),
        None => mail::transport_from_config(&config)?,
    };
    let state = Arc::new(State::new(config, db, options.clock.clone(), keys, mailer)?);
    state.start_batchers();
    Ok(state)
}

/// The generated OpenAPI document.
pub async fn spec_json() -> anyhow::Result<String> {
    let mut config = Config::default();
    config.database.url = "sqlite::memory:".into();
    config.database.max_connections = 1;
    let state = build_state(config, &BuildOptions::default()).await?;
    Ok(api::merge_repeated_keys(&api::service(state).spec()))
}

/// The whole HTTP app.
pub fn routes(state: AppState) -> BoxEndpoint<'static> {
    let service = api::service(state.clone());
    let state_for_data = state.clone();
    let spec = api::merge_repeated_keys(&service.spec());
    let allow = Arc::new(AllowTable::from_spec(&spec));
    let plumbing = Arc::new(Plumbing {
        max_body: state.config.server.max_body_bytes,
        max_bulk_body: state.config.server.max_bulk_body_bytes,
        allow,
        state: state.clone(),
    });
    Route::new()
        // GET (and HEAD) only: any other method is a 405 with `Allow`.
        .at(
            "/openapi.json",
            poem::get(poem::endpoint::make_sync(move |_| {
                poem::Response::builder()
                    .content_type("application/json; charset=utf-8")
                    .body(spec.clone())
            })),
        )
        .nest("/docs", poem::get(service.swagger_ui()))
        .nest("/", service)
        .data(state_for_data)
        .with(CatchPanic::new().with_handler(panic_response))
        .around(move |ep, req| {
            let plumbing = plumbing.clone();
            async move { plumbing.handle(&ep, req).await }
        })
        .boxed()
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with(config, BuildOptions::default()).await
    }

    pub async fn build_with(mut config: Config, options: BuildOptions) -> anyhow::Result<Self> {
        let bind = config.server.bind.clone();
        let listener = tokio::net::TcpListener::bind(&bind)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
        let port = listener.local_addr()?.port();
        if options.public_url_from_port {
            config.server.public_url = format!("http://127.0.0.1:{port}");
        }
        let state = build_state(config, &options).await?;
        // Only a serving process keeps the bulk check's copy; the CLI asks
        // the database.
        state.start_check_cache();
        Ok(Self {
            port,
            route: routes(state.clone()),
            state,
            listener,
            background_workers: options.background_workers,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Serves until SIGINT or SIGTERM, then drains in-flight requests.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(wait_for_signal()).await
    }

    /// Serves until `stop` resolves.
    pub async fn run_until(
        self,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (trigger, shutdown) = shutdown::channel();
        let mut workers = Vec::new();
        if self.background_workers {
            workers.push(tokio::spawn(mail_worker::run(
                self.state.clone(),
                shutdown.clone(),
            )));
            workers.push(tokio::spawn(crate::mailchimp::sync::run(
                self.state.clone(),
                shutdown.clone(),
            )));
            workers.push(tokio::spawn(crate::events::run(
                self.state.clone(),
                shutdown.clone(),
            )));
            workers.push(tokio::spawn(crate::mailchimp::reconcile::run(
                self.state.clone(),
                shutdown.clone(),
            )));
            workers.push(tokio::spawn(scheduler::run(
                self.state.clone(),
                shutdown.clone(),
            )));
        }
        tracing::info!(port = self.port, "listening");
        let acceptor = TcpAcceptor::from_tokio(self.listener)?;
        let result = Server::new_with_acceptor(acceptor)
            .run_with_graceful_shutdown(self.route, stop, Some(Duration::from_secs(10)))
            .await;
        trigger.trigger();
        for w in workers {
            let _ = w.await;
        }
        result.map_err(Into::into)
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}
