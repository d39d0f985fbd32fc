//! Coalescing concurrent writes. Requests hand their work to a few writer
//! tasks, each of which takes whatever has queued up and carries it out in one
//! transaction with set-based statements. Commits and statement round trips,
//! not CPU, bound a write-heavy endpoint; sharing them is how signups and
//! unsubscribes go past one commit per request.
use std::{future::Future, pin::Pin, sync::Arc};

use tokio::sync::{Mutex, mpsc, oneshot};

type Job<Req, Resp> = (Req, oneshot::Sender<anyhow::Result<Resp>>);

/// The work of one batch: answers in the order of the requests.
pub type BatchFn<Req, Resp> = Arc<
    dyn Fn(Vec<Req>) -> Pin<Box<dyn Future<Output = Vec<anyhow::Result<Resp>>> + Send>>
        + Send
        + Sync,
>;

/// A queue with writer tasks behind it.
pub struct Batcher<Req, Resp> {
    tx: mpsc::Sender<Job<Req, Resp>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts `writers` tasks that each take up to `max_batch` requests at a time.
    pub fn start(writers: usize, max_batch: usize, work: BatchFn<Req, Resp>) -> Self {
        let (tx, rx) = mpsc::channel::<Job<Req, Resp>>(max_batch * writers * 4);
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..writers.max(1) {
            let rx = rx.clone();
            let work = work.clone();
            tokio::spawn(async move {
                loop {
                    let mut jobs = Vec::with_capacity(max_batch);
                    {
                        let mut rx = rx.lock().await;
                        match rx.recv().await {
                            Some(j) => jobs.push(j),
                            None => return,
                        }
                        while jobs.len() < max_batch {
                            match rx.try_recv() {
                                Ok(j) => jobs.push(j),
                                Err(_) => break,
                            }
                        }
                    }
                    let (reqs, replies): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
                    let n = reqs.len();
                    let mut answers = work(reqs).await.into_iter();
                    for reply in replies {
                        let answer = answers.next().unwrap_or_else(|| {
                            Err(anyhow::anyhow!("a batch of {n} gave too few answers"))
                        });
                        let _ = reply.send(answer);
                    }
                }
            });
        }
        Self { tx }
    }

    /// Queues one request and waits for its answer.
    pub async fn submit(&self, req: Req) -> anyhow::Result<Resp> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((req, reply))
            .await
            .map_err(|_| anyhow::anyhow!("the writer tasks have stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("a writer task dropped the request"))?
    }
}
