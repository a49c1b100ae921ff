//! Callers that stop waiting: a request's timeout, a client that hung up.
//! The resolution goes on, and the caller's hook is told what it did.

use super::*;

/// The audit trail says what a timed-out request was doing: reading an
/// existing key, or creating a new one.
#[tokio::test(start_paused = true)]
async fn a_timed_out_request_says_whether_it_was_reading_or_creating() {
    let mut s = settings();
    s.cache_ttl = Duration::ZERO;
    let rig = rig_with(s);
    let existing = KeyId::parse("exists").unwrap();
    rig.broker.get_or_create(&existing, true).await.unwrap();
    for r in regions() {
        rig.kms.set_fault(&r, Some(Fault::Hang));
    }
    let limit = Some(Duration::from_millis(500));
    let (result, action) = rig
        .broker
        .get_or_create_within(&existing, true, limit, || None)
        .await;
    assert!(matches!(result, Err(BrokerError::Timeout(_))), "{result:?}");
    assert_eq!(action, Action::Read);
    let fresh = KeyId::parse("fresh").unwrap();
    let (result, action) = rig
        .broker
        .get_or_create_within(&fresh, true, limit, || None)
        .await;
    assert!(matches!(result, Err(BrokerError::Timeout(_))), "{result:?}");
    assert_eq!(action, Action::Create);
}

/// A resolution goes on when its caller stops waiting, and may create a
/// key: the caller's hook is told what it did once it ends, when the
/// caller timed out or was dropped (a client that hung up), and never
/// when the caller got the outcome itself.
#[tokio::test(start_paused = true)]
async fn a_caller_that_stops_waiting_is_told_what_its_resolution_did() {
    type Told = Arc<Mutex<Vec<(bool, Option<KeySource>, Action, Unwaited)>>>;
    let told: Told = Arc::default();
    let hook = |told: &Told| {
        let told = Arc::clone(told);
        move || -> Option<Unanswered> {
            Some(Box::new(
                move |result: &Result<Resolved, BrokerError>, action, why| {
                    let r = result.as_ref().ok();
                    told.lock().unwrap().push((
                        r.is_some_and(|r| r.created),
                        r.map(|r| r.source.clone()),
                        action,
                        why,
                    ));
                },
            ))
        }
    };
    // Once the slow call has ended, the hook was told of one create in r1.
    async fn created_in_r1_after_the_call_ends(told: &Told, why: Unwaited) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let created = (true, Some(KeySource::Region(r("r1"))), Action::Create, why);
        assert_eq!(
            told.lock().unwrap().drain(..).collect::<Vec<_>>(),
            [created]
        );
    }
    let mut s = settings();
    s.cache_ttl = Duration::ZERO;
    let rig = rig_with(s);
    let slow = Fault::Delay(Duration::from_secs(2));
    for r in regions() {
        rig.kms.set_fault(&r, Some(slow));
    }

    // Answered: the hook is never called.
    let (result, _) = rig
        .broker
        .get_or_create_within(&id("answered"), true, None, hook(&told))
        .await;
    assert!(result.unwrap().created);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(told.lock().unwrap().is_empty());

    // Timed out: answered with the timeout, then told of the create.
    let limit = Some(Duration::from_millis(500));
    let (result, _) = rig
        .broker
        .get_or_create_within(&id("late"), true, limit, hook(&told))
        .await;
    assert!(matches!(result, Err(BrokerError::Timeout(_))), "{result:?}");
    assert!(told.lock().unwrap().is_empty(), "told before the end");
    created_in_r1_after_the_call_ends(&told, Unwaited::TimedOut).await;

    // Dropped mid-create (a client that hung up): the key is still
    // created, and the hook says so.
    let gone_id = id("gone");
    let gone = rig
        .broker
        .get_or_create_within(&gone_id, true, None, hook(&told));
    assert!(tokio::time::timeout(Duration::from_millis(100), gone)
        .await
        .is_err());
    created_in_r1_after_the_call_ends(&told, Unwaited::Gone).await;
    let (read, _) = rig
        .broker
        .get_or_create_within(&id("gone"), false, None, || None)
        .await;
    assert!(
        !read.unwrap().created,
        "the key created for the gone client is kept"
    );
}

/// A request served the expired key when its timeout passed
/// (`stale_if_error`) got its answer: its hook is not told of the refresh.
#[tokio::test(start_paused = true)]
async fn a_caller_served_the_stale_key_on_its_timeout_is_not_told_again() {
    let mut s = settings();
    s.cache_ttl = Duration::from_secs(10);
    s.stale_if_error = Duration::from_secs(3600);
    let rig = rig_with(s);
    rig.broker.get_or_create(&id("s"), true).await.unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    for r in regions() {
        rig.kms
            .set_fault(&r, Some(Fault::Delay(Duration::from_secs(2))));
    }
    let told = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&told);
    let (result, _) = rig
        .broker
        .get_or_create_within(&id("s"), true, Some(Duration::from_millis(500)), || {
            Some(Box::new(move |_: &Result<Resolved, BrokerError>, _, _| {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }))
        })
        .await;
    assert_eq!(result.unwrap().source, KeySource::StaleCache);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(told.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// The lines a shared miss logs carry the request that started it, also
/// once that request has stopped waiting (its resolution then goes on in a
/// task of its own), and not a request that merely joined it.
#[tokio::test(start_paused = true)]
async fn a_miss_logs_under_the_request_that_started_it_after_it_stops_waiting() {
    use tracing::Instrument;

    let (lines, _default) = capture_lines();
    let rig = rig_with(no_cache());
    let sp = id("sp");
    rig.broker.get_or_create(&sp, true).await.unwrap();
    for r in regions() {
        rig.kms.set_fault(&r, Some(Fault::Hang));
    }
    let ((started, _), joined) = tokio::join!(
        rig.broker
            .get_or_create_within(&sp, true, Some(Duration::from_millis(100)), || None)
            .instrument(tracing::info_span!("request", request_id = "started-it")),
        async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            rig.broker.get_or_create(&sp, true).await
        }
        .instrument(tracing::info_span!("request", request_id = "joined-it")),
    );
    assert!(matches!(started, Err(BrokerError::Timeout(_))));
    assert!(joined.unwrap_err().is_unavailable(), "every region hung");
    let failed = lines.containing("KMS call failed");
    assert_eq!(failed.len(), 3, "one per region: {failed:?}");
    for line in failed {
        assert!(line.contains("request_id=\"started-it\""), "{line}");
    }
}
