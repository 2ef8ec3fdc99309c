//! The fork server dies: the pool notices, its running workers keep
//! serving, a new fork server is forked, later crashes are still replaced,
//! no job is lost, and nothing is left behind.
//!
//! The fork server is found as the parent of a worker (a job returns its
//! pid), so these tests can share a process.

mod common;

use common::{alive, children_of, stat, wait_until, worker_pid};
use forkpool::{JobError, Pool};
use std::time::Duration;

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn abort(_: ()) -> u32 {
    std::process::abort()
}

fn parent_of(pid: u32) -> i32 {
    stat(pid as i32).expect("process exists").1
}

/// SIGKILLs a fork server: a child of this process, never anything else.
fn sigkill(pid: i32) {
    assert!(children_of(me()).contains(&pid), "{pid} is not our child");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

fn me() -> i32 {
    std::process::id() as i32
}

/// The pool's live fork server: the parent of a worker that is still its
/// child (an orphaned worker's parent is init, or a subreaper).
fn fork_server(pool: &Pool) -> i32 {
    fn pid_after(ms: u64) -> u32 {
        std::thread::sleep(Duration::from_millis(ms));
        std::process::id()
    }
    for _ in 0..20 {
        // Slow items spread over every worker.
        let pids = pool
            .map(pid_after, vec![20u64; 4 * pool.workers()])
            .unwrap();
        let ours = children_of(me());
        if let Some(p) = pids.into_iter().map(parent_of).find(|p| ours.contains(p)) {
            return p;
        }
    }
    panic!("no worker of the current fork server answered");
}

#[test]
fn a_killed_fork_server_is_replaced_and_running_workers_serve_on() {
    let pool = Pool::new(1).unwrap();
    let first = pool.apply(worker_pid, ()).unwrap();
    let zygote = parent_of(first);
    assert!(children_of(me()).contains(&zygote));

    // A job is running and more are queued when the fork server dies.
    let running = pool.submit(nap_ms, 800);
    let queued: Vec<_> = (0..20).map(|i| pool.submit(nap_ms, i)).collect();
    std::thread::sleep(Duration::from_millis(200));
    sigkill(zygote);

    assert_eq!(running.get(), Ok(800), "the running job finished");
    for (i, h) in queued.into_iter().enumerate() {
        assert_eq!(h.get(), Ok(i as u64), "no queued job lost");
    }
    assert_eq!(
        pool.apply(worker_pid, ()),
        Ok(first),
        "the orphaned worker serves on"
    );
    assert!(
        wait_until(Duration::from_secs(10), || pool
            .stats()
            .fork_server_restarts
            == 1),
        "{:?}",
        pool.stats()
    );
    assert!(
        wait_until(Duration::from_secs(5), || stat(zygote).is_none()),
        "the dead fork server was reaped, not left a zombie"
    );

    // The orphan dies under a job: its exit status is unknowable (it is
    // init's child now), so the job is Crashed with neither cause.
    assert_eq!(
        pool.apply(abort, ()),
        Err(JobError::Crashed {
            signal: None,
            exit_code: None
        })
    );
    // Its replacement comes from the new fork server, whose reports are
    // complete again.
    let second = pool.apply(worker_pid, ()).unwrap();
    assert_ne!(second, first);
    let new_zygote = parent_of(second);
    assert_ne!(new_zygote, zygote);
    assert!(children_of(me()).contains(&new_zygote));
    assert_eq!(
        pool.apply(abort, ()),
        Err(JobError::Crashed {
            signal: Some(libc::SIGABRT),
            exit_code: None
        })
    );
    let third = pool.apply(worker_pid, ()).unwrap();
    assert_eq!(parent_of(third), new_zygote);

    let s = pool.stats();
    assert_eq!((s.crashed, s.worker_restarts), (2, 2), "{s:?}");
    assert_eq!(s.submitted, s.completed + s.failed + s.cancelled, "{s:?}");
    pool.join().unwrap();
    assert!(!alive(new_zygote) && !alive(third as i32));
}

#[test]
fn a_map_survives_its_fork_server_dying_twice() {
    let pool = Pool::builder().workers(2).chunk_size(5).build().unwrap();
    fn slow_square(x: u64) -> u64 {
        std::thread::sleep(Duration::from_millis(5));
        x * x
    }
    for round in 0..2 {
        let zygote = fork_server(&pool);
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            sigkill(zygote);
        });
        let got = pool.map(slow_square, 0..400u64).unwrap();
        assert_eq!(got, (0..400u64).map(|x| x * x).collect::<Vec<_>>());
        killer.join().unwrap();
        // Crashes after the loss are still replaced.
        assert!(matches!(
            pool.apply(abort, ()),
            Err(JobError::Crashed { .. })
        ));
        assert!(
            wait_until(Duration::from_secs(10), || {
                let s = pool.stats();
                s.fork_server_restarts == round + 1 && s.live_workers == 2
            }),
            "round {round}: {:?}",
            pool.stats()
        );
        assert_eq!(pool.map(slow_square, 0..10u64).unwrap()[9], 81);
    }
}

#[test]
fn orphaned_workers_die_with_their_pool() {
    let pool = Pool::new(2).unwrap();
    let pids: Vec<u32> = pool
        .map(
            |ms: u64| {
                std::thread::sleep(Duration::from_millis(ms));
                std::process::id()
            },
            vec![300u64; 2],
        )
        .unwrap();
    let zygote = parent_of(pids[0]);
    let busy = pool.submit(nap_ms, 60_000);
    std::thread::sleep(Duration::from_millis(100));
    sigkill(zygote);
    assert!(wait_until(Duration::from_secs(10), || pool
        .stats()
        .fork_server_restarts
        == 1));
    drop(pool);
    assert_eq!(busy.get(), Err(JobError::Cancelled));
    assert!(
        wait_until(Duration::from_secs(2), || pids
            .iter()
            .all(|&p| !alive(p as i32))),
        "orphans outlived their pool: {pids:?}"
    );
}

#[test]
fn the_supervisor_serves_on_while_a_new_fork_server_waits_for_stdout() {
    let pool = Pool::new(1).unwrap();
    let zygote = fork_server(&pool);
    let orphan = pool.apply(worker_pid, ()).unwrap();
    // A caller thread holds the stdout lock, which forking a fork server
    // needs (so that a job may print): the fork waits for it, the pool
    // does not.
    let out = std::io::stdout().lock();
    sigkill(zygote);
    assert!(wait_until(Duration::from_secs(10), || stat(zygote).is_none()));
    for _ in 0..20 {
        let h = pool.submit(worker_pid, ());
        assert!(
            h.wait_timeout(Duration::from_secs(10)),
            "the supervisor blocked on the stdout lock"
        );
        assert_eq!(h.get(), Ok(orphan));
    }
    assert_eq!(
        pool.stats().fork_server_restarts,
        0,
        "the fork waits for the lock"
    );
    drop(out);
    assert!(
        wait_until(Duration::from_secs(10), || pool
            .stats()
            .fork_server_restarts
            == 1),
        "{:?}",
        pool.stats()
    );
    assert!(matches!(
        pool.apply(abort, ()),
        Err(JobError::Crashed { .. })
    ));
    assert_ne!(pool.apply(worker_pid, ()), Ok(orphan), "replaced");
}
