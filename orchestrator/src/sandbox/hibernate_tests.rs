//! Stop, start, pause, resume, auto-resume, timeouts and their events,
//! against [`FakeRuntime`](crate::runtime::fake::FakeRuntime): the order
//! of things, in milliseconds. That the disk survives is the end-to-end
//! suites' to show, on the real runtimes.

use super::manager_tests::{by_client, fixture, fixture_with, Fixture};
use super::*;
use crate::runtime::fake::Start;
use futures_util::StreamExt;
use sbx_api::{Event, LifecycleRequest};
use std::path::Path;

fn with_lifecycle(lifecycle: LifecycleRequest) -> CreateSandboxRequest {
    CreateSandboxRequest {
        lifecycle: Some(lifecycle),
        ..CreateSandboxRequest::default()
    }
}

/// Every event stored so far for `id`.
async fn events_of(manager: &Arc<Manager>, id: &str) -> Vec<Event> {
    manager
        .events(Some(id.to_owned()), 0, false)
        .map(|event| event.expect("event"))
        .collect()
        .await
}

/// Waits (a bounded while) for an event of `kind` about `id`. An
/// operation's event goes out once the runtime has done it; its state
/// changes before (a paused sandbox refuses calls while it freezes).
async fn event_arrives(manager: &Arc<Manager>, id: &str, kind: EventKind) {
    let mut events = Box::pin(manager.events(Some(id.to_owned()), 0, true));
    let arrived = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if event.expect("event").kind == kind {
                return;
            }
        }
        panic!("the events of {id} ended before {kind:?}");
    });
    arrived.await.expect("the event arrives");
}

/// The stored state of `id`; None once its record is gone.
fn state_of(f: &Fixture, id: &str) -> Option<SandboxState> {
    f.store
        .get(id)
        .expect("get")
        .map(|record| record.sandbox.state)
}

/// Waits (a bounded while) until `id`'s stored state is `expected`.
async fn state_becomes(f: &Fixture, id: &str, expected: Option<SandboxState>) {
    for _ in 0..200 {
        if state_of(f, id) == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(state_of(f, id), expected, "{id} never got there");
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|event| event.kind).collect()
}

#[tokio::test]
async fn a_stopped_sandbox_keeps_its_record_and_dir_and_starts_again() {
    let f = fixture();
    let asleep = with_lifecycle(LifecycleRequest {
        auto_resume: Some(false),
        ..LifecycleRequest::default()
    });
    let id = f.manager.create(asleep).await.expect("created").id;
    let stopped = f
        .manager
        .stop(&id, "stopped by test".into())
        .await
        .expect("stopped");
    assert_eq!(stopped.state, SandboxState::Stopped);
    assert_eq!(f.runtime.removed(), vec![id.clone()], "the container went");
    assert_eq!(f.dirs(), 1, "the directory stays");
    let refused = f.manager.agent(&id).await.expect_err("not serving");
    assert!(matches!(refused, SandboxError::Conflict(_)), "{refused}");
    assert!(
        f.manager.stop(&id, "again".into()).await.is_ok(),
        "stopping a stopped sandbox is a no-op"
    );

    let started = f.manager.start_stopped(&id).await.expect("started");
    assert_eq!(started.state, SandboxState::Running);
    let agent = f.manager.agent(&id).await.expect("serving");
    assert!(agent.agent_health().await.is_ok(), "a new agent answers");
    assert_eq!(
        kinds(&events_of(&f.manager, &id).await),
        [EventKind::Created, EventKind::Stopped, EventKind::Started]
    );
    let stop = &events_of(&f.manager, &id).await[1];
    assert_eq!(stop.reason.as_deref(), Some("stopped by test"));
}

#[tokio::test]
async fn a_start_that_fails_leaves_the_sandbox_stopped() {
    let f = fixture();
    let id = f.new_sandbox().await;
    f.manager.stop(&id, "test".into()).await.expect("stopped");
    f.runtime.script([Start::Fail]);
    f.manager.start_stopped(&id).await.expect_err("fails");
    assert_eq!(f.states(), [SandboxState::Stopped]);
    assert_eq!(f.dirs(), 1);
    f.manager
        .start_stopped(&id)
        .await
        .expect("the next start works");
}

#[tokio::test]
async fn pause_freezes_and_resume_thaws() {
    let f = fixture();
    let asleep = with_lifecycle(LifecycleRequest {
        auto_resume: Some(false),
        ..LifecycleRequest::default()
    });
    let id = f.manager.create(asleep).await.expect("created").id;
    let paused = f.manager.pause(&id, "test".into()).await.expect("paused");
    assert_eq!(paused.state, SandboxState::Paused);
    assert!(f.runtime.is_paused(&id));
    assert!(matches!(
        f.manager.agent(&id).await,
        Err(SandboxError::Conflict(_))
    ));
    assert!(f.manager.start_stopped(&id).await.is_err(), "not stopped");
    f.manager.resume(&id).await.expect("resumed");
    assert!(!f.runtime.is_paused(&id));
    assert!(f.manager.agent(&id).await.is_ok());
    // A paused sandbox can be stopped (and is thawed for it) or deleted.
    f.manager.pause(&id, "test".into()).await.expect("paused");
    f.manager.stop(&id, "test".into()).await.expect("stopped");
    assert!(!f.runtime.is_paused(&id));
    f.manager.delete(&id, by_client()).await.expect("deleted");
    assert_eq!(f.dirs(), 0);
}

#[tokio::test]
async fn auto_resume_wakes_a_sandbox_for_the_call_that_needs_it() {
    let f = fixture();
    let awake = with_lifecycle(LifecycleRequest {
        auto_resume: Some(true),
        ..LifecycleRequest::default()
    });
    let id = f.manager.create(awake).await.expect("created").id;
    f.manager.stop(&id, "test".into()).await.expect("stopped");
    let agent = f.manager.agent(&id).await.expect("woken");
    assert!(agent.agent_health().await.is_ok());
    assert_eq!(f.states(), [SandboxState::Running]);
    f.manager.pause(&id, "test".into()).await.expect("paused");
    f.manager.agent(&id).await.expect("woken");
    assert!(!f.runtime.is_paused(&id));
    assert_eq!(
        kinds(&events_of(&f.manager, &id).await),
        [
            EventKind::Created,
            EventKind::Stopped,
            EventKind::Started,
            EventKind::Paused,
            EventKind::Resumed
        ]
    );
}

fn fast_lifetimes(config: &mut ManagerConfig) {
    config.lifetime_tick = Duration::from_millis(20);
    config.expiring_warning = Duration::from_millis(600);
}

#[tokio::test]
async fn a_timeout_warns_then_deletes_and_the_record_says_why() {
    let f = fixture_with(fast_lifetimes);
    tokio::spawn(Arc::clone(&f.manager).enforce_lifetimes());
    let short = with_lifecycle(LifecycleRequest {
        timeout_s: Some(1),
        on_timeout: Some(OnTimeout::Delete),
        ..LifecycleRequest::default()
    });
    let sandbox = f.manager.create(short).await.expect("created");
    let expires = sandbox.expires_at.expect("a timeout");
    event_arrives(&f.manager, &sandbox.id, EventKind::Deleted).await;
    assert!(Utc::now() >= expires, "not before its time");
    let ended = f.manager.get(&sandbox.id).await.expect("still answered");
    assert_eq!(ended.state, SandboxState::Deleted);
    assert_eq!(ended.ended_reason.as_deref(), Some("timeout"));
    assert_eq!(f.dirs(), 0, "nothing but the record is left");
    let events = events_of(&f.manager, &sandbox.id).await;
    assert_eq!(
        kinds(&events),
        [EventKind::Created, EventKind::Expiring, EventKind::Deleted]
    );
    assert_eq!(events[1].at, Some(expires));
    assert_eq!(events[2].reason.as_deref(), Some("timeout"));
    // Deleting what is left removes the record.
    f.manager
        .delete(&sandbox.id, by_client())
        .await
        .expect("forgotten");
    assert!(f.states().is_empty());
}

#[tokio::test]
async fn timeouts_stop_or_pause_as_the_lifecycle_says() {
    let f = fixture_with(fast_lifetimes);
    tokio::spawn(Arc::clone(&f.manager).enforce_lifetimes());
    let mut ids = Vec::new();
    for action in [OnTimeout::Stop, OnTimeout::Pause] {
        let request = with_lifecycle(LifecycleRequest {
            timeout_s: Some(1),
            on_timeout: Some(action),
            auto_resume: Some(false),
            ..LifecycleRequest::default()
        });
        ids.push(f.manager.create(request).await.expect("created").id);
    }
    event_arrives(&f.manager, &ids[0], EventKind::Stopped).await;
    event_arrives(&f.manager, &ids[1], EventKind::Paused).await;
    assert_eq!(state_of(&f, &ids[1]), Some(SandboxState::Paused));
    assert!(f.runtime.is_paused(&ids[1]));
    let stopped = f.manager.get(&ids[0]).await.expect("get");
    assert_eq!(stopped.state, SandboxState::Stopped);
    // Started again, it has its timeout again from now.
    let started = f.manager.start_stopped(&ids[0]).await.expect("started");
    assert!(started.expires_at.expect("a timeout") > Utc::now());
    assert_eq!(state_of(&f, &ids[0]), Some(SandboxState::Running));
    assert_eq!(state_of(&f, &ids[1]), Some(SandboxState::Paused));
}

#[tokio::test]
async fn idleness_ends_a_sandbox_only_while_nothing_uses_it() {
    let f = fixture_with(fast_lifetimes);
    tokio::spawn(Arc::clone(&f.manager).enforce_lifetimes());
    let idle = with_lifecycle(LifecycleRequest {
        idle_timeout_s: Some(1),
        on_timeout: Some(OnTimeout::Stop),
        auto_resume: Some(false),
        ..LifecycleRequest::default()
    });
    let used = f.manager.create(idle.clone()).await.expect("created").id;
    let unused = f.manager.create(idle).await.expect("created").id;
    let stream = f.manager.in_use(&used);
    assert_eq!(f.manager.get(&used).await.expect("get").idle_since, None);
    event_arrives(&f.manager, &unused, EventKind::Stopped).await;
    let stopped = &events_of(&f.manager, &unused).await[2];
    assert_eq!(stopped.reason.as_deref(), Some("idle"));
    assert_eq!(
        f.manager.get(&used).await.expect("get").state,
        SandboxState::Running,
        "a stream in progress keeps it awake"
    );
    drop(stream);
    assert!(f
        .manager
        .get(&used)
        .await
        .expect("get")
        .idle_since
        .is_some());
    state_becomes(&f, &used, Some(SandboxState::Stopped)).await;
}

#[tokio::test]
async fn set_timeout_moves_the_deadline_and_ended_records_go_after_retention() {
    let f = fixture_with(|config| {
        fast_lifetimes(config);
        config.retention = Duration::ZERO;
    });
    let id = f.new_sandbox().await;
    let later = f.manager.set_timeout(&id, 3600).await.expect("extended");
    assert_eq!(later.lifecycle.timeout_s, Some(3600));
    let at = later.expires_at.expect("a deadline");
    assert!(at > Utc::now() + chrono::Duration::seconds(3590));
    let sooner = f.manager.set_timeout(&id, 1).await.expect("shortened");
    assert!(sooner.expires_at.expect("a deadline") < at);
    tokio::spawn(Arc::clone(&f.manager).enforce_lifetimes());
    // The server's default on_timeout is stop; retention 0 is for deleted
    // records only.
    f.states_become(&[SandboxState::Stopped]).await;
    f.manager.delete(&id, by_client()).await.expect("deleted");
    let policy = f
        .manager
        .create(with_lifecycle(LifecycleRequest {
            timeout_s: Some(1),
            on_timeout: Some(OnTimeout::Delete),
            ..LifecycleRequest::default()
        }))
        .await
        .expect("created")
        .id;
    state_becomes(&f, &policy, None).await;
}

#[tokio::test]
async fn recovery_settles_an_interrupted_stop_or_start_as_stopped() {
    let f = fixture();
    let stopping = f.new_sandbox().await;
    let starting = f.new_sandbox().await;
    f.manager
        .stop(&starting, "test".into())
        .await
        .expect("stopped");
    assert!(f
        .store
        .transition(&stopping, Transition::Stop)
        .expect("stop"));
    assert!(f
        .store
        .transition(&starting, Transition::Start)
        .expect("start"));
    f.manager.recover().await.expect("recovered");
    assert_eq!(f.states(), [SandboxState::Stopped, SandboxState::Stopped]);
    assert_eq!(f.dirs(), 2, "their disks stay");
    assert!(!f.runtime.is_running(&stopping).await.expect("asked"));
    f.manager
        .start_stopped(&stopping)
        .await
        .expect("starts again");
}

#[tokio::test]
async fn a_sandbox_recovery_cannot_settle_is_failed_and_the_rest_recover() {
    let f = fixture();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let id = f.new_sandbox().await;
        assert!(f.store.transition(&id, Transition::Stop).expect("stop"));
        ids.push(id);
    }
    f.runtime.set_stuck(&ids[0], true);
    f.manager.recover().await.expect("the server comes up");
    assert_eq!(state_of(&f, &ids[1]), Some(SandboxState::Stopped));
    let stuck = f.manager.get(&ids[0]).await.expect("listed");
    assert_eq!(stuck.state, SandboxState::Failed);
    assert_eq!(
        stuck.ended_reason.as_deref(),
        Some("server recovery failed")
    );
    let events = events_of(&f.manager, &ids[0]).await;
    assert_eq!(events.last().map(|e| e.kind), Some(EventKind::Failed));
    // Once the engine lets go, a delete finishes the job.
    f.runtime.set_stuck(&ids[0], false);
    f.manager
        .delete(&ids[0], by_client())
        .await
        .expect("deleted");
    assert_eq!(state_of(&f, &ids[0]), None);
}

/// Makes `volume` a disk volume whose image holds `contents`.
fn volume_holding(volume: &Path, contents: &str) {
    std::fs::create_dir_all(volume).expect("volume");
    std::fs::write(volume.join(crate::runtime::DISK_IMAGE), contents).expect("image");
}

#[tokio::test]
async fn recovery_finishes_a_restore_the_server_was_killed_in() {
    let f = fixture();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = f.new_sandbox().await;
        f.manager.stop(&id, "test".into()).await.expect("stopped");
        ids.push(id);
    }
    // Killed after recording the new source: before either rename
    // (ids[0]), between moving the old disk aside and the staged one into
    // place (ids[1]), and after both, before recording it done (ids[2]).
    for (n, id) in ids.iter().enumerate() {
        let disk = f.manager.dir(id).disk_volume();
        let staged = format!(".disk.{n}.tmp");
        let (staging, aside) = (
            disk.with_file_name(&staged),
            disk.with_file_name(format!(".disk.{n}.replaced.tmp")),
        );
        match n {
            0 => {
                volume_holding(&disk, "old");
                volume_holding(&staging, "restored");
            }
            1 => {
                volume_holding(&aside, "old");
                volume_holding(&staging, "restored");
            }
            _ => {
                volume_holding(&aside, "old");
                volume_holding(&disk, "restored");
                // And a copy killed before anything was recorded.
                volume_holding(&disk.with_file_name(".disk.0badc0de.tmp"), "half");
            }
        }
        let build = Path::new("/builds/other");
        f.store
            .set_disk_source(id, "other", build, 64, &staged)
            .expect("recorded");
    }
    f.manager.recover().await.expect("recovered");
    assert!(f.store.unfinished_restores().expect("read").is_empty());
    for id in &ids {
        let dir = f.manager.dir(id);
        assert_eq!(
            std::fs::read_to_string(dir.disk_image()).expect("disk"),
            "restored"
        );
        let listed: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp"))
            .collect();
        assert!(listed.is_empty(), "{listed:?}");
        let sandbox = f.manager.get(id).await.expect("get");
        assert_eq!(
            (sandbox.image.as_str(), sandbox.state),
            ("other", SandboxState::Stopped)
        );
    }
}

#[tokio::test]
async fn forks_start_on_copies_of_the_source_disk_and_a_failed_copy_leaves_nothing() {
    let f = fixture();
    f.runtime.allow_disks();
    let request = CreateSandboxRequest {
        disk_mb: Some(64),
        ..CreateSandboxRequest::default()
    };
    let source = f.manager.create(request).await.expect("created").id;
    // Without its disk image the consistent copy fails: no fork is left.
    assert!(f.manager.fork(&source, 3).await.is_err());
    assert_eq!(f.states(), [SandboxState::Running]);
    assert_eq!(f.dirs(), 1, "only the source's directory");

    volume_holding(&f.manager.dir(&source).disk_volume(), "the source's files");
    let outcomes = f.manager.fork(&source, 3).await.expect("forked");
    assert_eq!(outcomes.len(), 3);
    for outcome in &outcomes {
        let fork = outcome.as_ref().expect("each fork starts");
        assert_eq!(fork.state, SandboxState::Running);
        let disk = f.manager.dir(&fork.id).disk_image();
        assert_eq!(
            std::fs::read_to_string(disk).expect("copied"),
            "the source's files"
        );
    }
    assert!(!f.runtime.is_paused(&source), "the source runs on");
    let forked = events_of(&f.manager, &source)
        .await
        .into_iter()
        .filter(|event| event.kind == EventKind::Forked)
        .count();
    assert_eq!(forked, 3);
    assert_eq!(f.states(), [SandboxState::Running; 4]);
}

#[tokio::test]
async fn a_death_is_recorded_when_it_happens_and_a_stop_is_not_one() {
    let f = fixture();
    tokio::spawn(Arc::clone(&f.manager).record_deaths());
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(f.new_sandbox().await);
    }
    // Stopped and started again: the new init is watched, the old one's
    // exit was not a death.
    f.manager
        .stop(&ids[1], "test".into())
        .await
        .expect("stopped");
    f.manager.start_stopped(&ids[1]).await.expect("started");
    f.runtime.kill(&ids[1]);
    f.runtime.kill(&ids[0]);
    for id in &ids {
        event_arrives(&f.manager, id, EventKind::Failed).await;
        assert_eq!(state_of(&f, id), Some(SandboxState::Failed));
    }
    let reasons: Vec<_> = events_of(&f.manager, &ids[1])
        .await
        .into_iter()
        .map(|event| (event.kind, event.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            (EventKind::Created, None),
            (EventKind::Stopped, Some("test".into())),
            (EventKind::Started, None),
            (EventKind::Failed, Some("agent died".into())),
        ]
    );
}

#[tokio::test]
async fn a_follower_gets_the_history_then_live_events_and_ends_at_shutdown() {
    let f = fixture();
    let id = f.new_sandbox().await;
    let mut follower = Box::pin(f.manager.events(Some(id.clone()), 0, true));
    let first = follower.next().await.expect("an event").expect("ok");
    assert_eq!(first.kind, EventKind::Created);
    f.manager.pause(&id, "test".into()).await.expect("paused");
    let live = follower.next().await.expect("an event").expect("ok");
    assert_eq!(live.kind, EventKind::Paused);
    assert!(live.seq > first.seq);
    let since: Vec<Event> = f
        .manager
        .events(None, first.seq, false)
        .map(|event| event.expect("ok"))
        .collect()
        .await;
    assert_eq!(kinds(&since), [EventKind::Paused]);
    f.manager.stop_following();
    assert!(follower.next().await.is_none(), "ended");
}
