//! Periodic jobs inside `serve`: the retention purge every
//! `retention.purge_interval`, and the pruning of idle rate-limit state.
//! Safe on every replica at once.
use crate::{services::purge::purge, shutdown::Shutdown, state::AppState};

pub async fn run(state: AppState, mut shutdown: Shutdown) {
    let period = state
        .config
        .retention
        .purge_interval
        .approx_std()
        .max(std::time::Duration::from_secs(1));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait() => return,
        }
        // Forget per-IP rate-limit state of addresses that have gone quiet,
        // so many source addresses cannot grow memory without bound.
        state.ip_limiter.retain_recent();
        state.ip_limiter.shrink_to_fit();
        if let Err(e) = purge(&state, false, |_, _| {}).await {
            tracing::error!(error = format!("{e:#}"), "scheduled purge failed");
        }
    }
}
