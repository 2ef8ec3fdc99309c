//! A web service that offloads slow work to forkpool, with axum on tokio:
//!
//! ```text
//! cargo run --release --features prometheus --example web_service -- --addr 127.0.0.1:3000
//! ```
//!
//! Then, from another terminal:
//!
//! ```text
//! curl -si -X POST localhost:3000/reports -H 'content-type: application/json' \
//!      -d '{"customer": "acme", "rows": 200}'
//! curl -s localhost:3000/reports/1          # pending, running with progress, then the report
//! curl -s -X DELETE localhost:3000/reports/1
//! curl -s localhost:3000/quotes/ACME        # a job awaited inside the request
//! curl -s localhost:3000/digest             # the periodic job
//! curl -s localhost:3000/metrics            # Prometheus
//! curl -s localhost:3000/inspect            # the pool, as JSON
//! ```
//!
//! Options: `--addr HOST:PORT` (default 127.0.0.1:3000; port 0 takes any
//! free port), `--digest-every SECONDS` (default 30). The bound address
//! is printed on the first line (`listening on http://...`). Ctrl-C
//! stops the server, waits for the requests in flight, then for the jobs.
//! The routes are in `app.rs`.

mod app;

use std::io::Write;
use std::time::Duration;

fn usage() -> ! {
    eprintln!("usage: web_service [--addr HOST:PORT] [--digest-every SECONDS]");
    std::process::exit(2)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut addr = "127.0.0.1:3000".to_string();
    let mut digest_every = Duration::from_secs(30);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--addr" => addr = args.next().unwrap_or_else(|| usage()),
            "--digest-every" => {
                let secs: f64 = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| s.is_finite() && *s >= 0.01)
                    .unwrap_or_else(|| usage());
                digest_every = Duration::from_secs_f64(secs);
            }
            _ => usage(),
        }
    }

    // The pool first, while the program is one thread: its workers are
    // forks of the program as it is now, and must not inherit a runtime.
    let pool = app::build_pool()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let service = app::Service::new(pool.clone(), app::Config { digest_every });
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        println!("listening on http://{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("stopping: finishing the requests in flight");
        };
        app::serve(listener, service, ctrl_c).await
    })?;
    drop(runtime);
    pool.join()?; // waits for the jobs already accepted
    Ok(())
}
