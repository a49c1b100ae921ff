//! The race between regions: hedges, the hedge budget, breakers, the
//! in-flight cap and full outages.

use super::*;

#[tokio::test(start_paused = true)]
async fn hedges_past_a_hung_region_then_its_breaker_opens_then_one_probe() {
    let rig = rig_with(no_cache());
    rig.broker.get_or_create(&id("h"), true).await.unwrap();
    rig.kms.set_fault(&r("r1"), Some(Fault::Hang));

    for round in 1..=3 {
        let started = Instant::now();
        let read = rig.broker.get_or_create(&id("h"), true).await.unwrap();
        assert_eq!(read.source, KeySource::Region(r("r2")));
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(250),
            "answer right after hedge_after"
        );
        assert_eq!(rig.kms.calls(&r("r1"), "decrypt"), round);
    }
    // The three calls to r1 run on to their own timeout: three faults open
    // the breaker, and r1 is not called while it is open.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let r1_calls = rig.kms.calls(&r("r1"), "decrypt");
    for _ in 0..5 {
        let started = Instant::now();
        let read = rig.broker.get_or_create(&id("h"), true).await.unwrap();
        assert_eq!(read.source, KeySource::Region(r("r2")));
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no hedge delay once the breaker is open"
        );
    }
    assert_eq!(rig.kms.calls(&r("r1"), "decrypt"), r1_calls);

    // After the window, exactly one request probes r1 (and, hung, fails).
    tokio::time::advance(Duration::from_millis(10_000)).await;
    let h = id("h");
    let (a, b) = tokio::join!(
        rig.broker.get_or_create(&h, true),
        rig.broker.get_or_create(&h, true)
    );
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(
        rig.kms.calls(&r("r1"), "decrypt"),
        r1_calls + 1,
        "one probe"
    );

    // Healthy again: once the failed probe's window is over, the next
    // probe succeeds and r1 serves once more.
    rig.kms.set_fault(&r("r1"), None);
    tokio::time::sleep(Duration::from_millis(2000 + 10_000)).await;
    let read = rig.broker.get_or_create(&id("h"), true).await.unwrap();
    assert_eq!(read.source, KeySource::Region(r("r1")));
    let read = rig.broker.get_or_create(&id("h"), true).await.unwrap();
    assert_eq!(read.source, KeySource::Region(r("r1")));
}

/// A call that lost the race runs on after its request was answered, and
/// what it logs still names that request.
#[tokio::test(start_paused = true)]
async fn a_losing_call_logs_under_the_request_that_made_it() {
    use tracing::Instrument;

    let (lines, _default) = capture_lines();
    let rig = rig_with(no_cache());
    rig.broker.get_or_create(&id("lc"), true).await.unwrap();
    rig.kms.set_fault(&r("r1"), Some(Fault::Hang));
    let read = rig
        .broker
        .get_or_create(&id("lc"), true)
        .instrument(tracing::info_span!("request", request_id = "made-it"))
        .await
        .unwrap();
    assert_eq!(read.source, KeySource::Region(r("r2")));
    assert!(lines.containing("KMS call failed").is_empty());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failed = lines.containing("KMS call failed");
    assert_eq!(failed.len(), 1, "r1's call timed out: {failed:?}");
    assert!(
        failed[0].contains("request_id=\"made-it\""),
        "{}",
        failed[0]
    );
}

/// A healthy region that is merely slower than `hedge_after` loses its
/// race, but its calls succeed: its breaker stays closed. It goes to the
/// back of the order (reads are served by the next region at once, with no
/// hedge wait and no hedge spent) and is tried first again once
/// `breaker_open` has passed.
#[tokio::test(start_paused = true)]
async fn a_slower_healthy_region_is_moved_back_and_keeps_its_breaker_closed() {
    let rig = rig_with(BrokerSettings {
        hedge_budget_percent: 100,
        ..no_cache()
    });
    rig.broker.get_or_create(&id("slow"), true).await.unwrap();
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Delay(Duration::from_millis(400))));
    let read = rig.broker.get_or_create(&id("slow"), true).await.unwrap();
    assert_eq!(read.source, KeySource::Region(r("r2")), "the hedge wins");
    assert_eq!(rig.kms.calls(&r("r1"), "decrypt"), 1);
    // r1's call ends at 400 ms, slower than hedge_after: r1 moves back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..20 {
        let started = Instant::now();
        let read = rig.broker.get_or_create(&id("slow"), true).await.unwrap();
        assert_eq!(read.source, KeySource::Region(r("r2")));
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "no hedge wait"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        rig.kms.calls(&r("r1"), "decrypt"),
        1,
        "r1 was not asked first"
    );
    // After breaker_open (10 s), r1 gets another chance as first choice.
    tokio::time::sleep(Duration::from_secs(10)).await;
    rig.broker.get_or_create(&id("slow"), true).await.unwrap();
    assert_eq!(rig.kms.calls(&r("r1"), "decrypt"), 2);
    let m = &rig.broker.inner.metrics;
    assert_eq!(
        m.region_breaker.with_label_values(&["r1", "closed"]).get(),
        1
    );
    assert_eq!(m.region_up.with_label_values(&["r1"]).get(), 1);
    assert_eq!(m.kms_hedges.with_label_values(&["r2"]).get(), 2);
}

/// When a slow region's time at the back is served, one request probes it;
/// the others of that moment still go to the next region first.
#[tokio::test(start_paused = true)]
async fn one_request_probes_a_slow_region_when_its_time_is_served() {
    let rig = rig_with(BrokerSettings {
        hedge_budget_percent: 100,
        ..no_cache()
    });
    for i in 0..5 {
        rig.broker
            .get_or_create(&id(&format!("p{i}")), true)
            .await
            .unwrap();
    }
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Delay(Duration::from_millis(400))));
    rig.broker.get_or_create(&id("p0"), true).await.unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let before = rig.kms.calls(&r("r1"), "decrypt");
    // Five different ids: five resolutions, not one shared flight.
    let reads: Vec<_> = (0..5)
        .map(|i| {
            let broker = rig.broker.clone();
            tokio::spawn(async move { broker.get_or_create(&id(&format!("p{i}")), true).await })
        })
        .collect();
    for read in reads {
        assert_eq!(
            read.await.unwrap().unwrap().source,
            KeySource::Region(r("r2"))
        );
    }
    assert_eq!(
        rig.kms.calls(&r("r1"), "decrypt") - before,
        1,
        "one probe, not five"
    );
}

/// Per-key errors say nothing about the region: no breaker opens, and the
/// read moves to the next region at once, without a hedge delay.
#[tokio::test(start_paused = true)]
async fn per_key_errors_move_on_at_once_and_open_no_breaker() {
    for kind in [
        KmsErrorKind::Misconfigured,
        KmsErrorKind::Integrity,
        KmsErrorKind::Other,
    ] {
        let rig = rig_with(no_cache());
        rig.broker.get_or_create(&id("k"), true).await.unwrap();
        rig.kms.set_fault(&r("r1"), Some(Fault::Fail(kind)));
        for round in 1..=10 {
            let started = Instant::now();
            let read = rig.broker.get_or_create(&id("k"), true).await.unwrap();
            assert_eq!(read.source, KeySource::Region(r("r2")), "{kind:?}");
            assert_eq!(started.elapsed(), Duration::ZERO, "{kind:?}");
            assert_eq!(
                rig.kms.calls(&r("r1"), "decrypt"),
                round,
                "{kind:?}: r1 still tried"
            );
        }
        let m = &rig.broker.inner.metrics;
        assert_eq!(
            m.region_breaker.with_label_values(&["r1", "closed"]).get(),
            1
        );
    }
}

/// Throttling is a region fault: it opens the breaker.
#[tokio::test(start_paused = true)]
async fn throttling_opens_the_breaker() {
    let rig = rig_with(no_cache());
    rig.broker.get_or_create(&id("t"), true).await.unwrap();
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Fail(KmsErrorKind::Throttled)));
    for _ in 0..3 {
        rig.broker.get_or_create(&id("t"), true).await.unwrap();
    }
    let m = &rig.broker.inner.metrics;
    assert_eq!(m.region_breaker.with_label_values(&["r1", "open"]).get(), 1);
    assert_eq!(m.region_up.with_label_values(&["r1"]).get(), 0);
}

/// Hedges sent because a region is slow are capped: the burst, then one
/// per ten calls at the default 10%.
#[tokio::test(start_paused = true)]
async fn the_hedge_budget_caps_hedges_to_a_share_of_calls() {
    let rig = rig_with(BrokerSettings {
        hedge_budget_burst: 2,
        // A slow region is moved back only for `breaker_open`: zero
        // here so that r1 stays first and the budget alone is measured.
        breaker_open: Duration::ZERO,
        ..no_cache()
    });
    rig.broker.get_or_create(&id("b"), true).await.unwrap();
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Delay(Duration::from_millis(1000))));
    let r2_before = rig.kms.calls(&r("r2"), "decrypt");
    let mut slow = 0;
    for _ in 0..21 {
        let started = Instant::now();
        let read = rig.broker.get_or_create(&id("b"), true).await.unwrap();
        if read.source == KeySource::Region(r("r1")) {
            assert_eq!(started.elapsed(), Duration::from_millis(1000));
            slow += 1;
        }
    }
    let hedges = rig.kms.calls(&r("r2"), "decrypt") - r2_before;
    // 2 from the burst (reads 1 and 2), then one each time ten calls have
    // refilled a token (reads 11 and 21).
    assert_eq!(hedges, 4);
    assert_eq!(slow, 17, "without budget, reads wait for the slow region");
    let m = &rig.broker.inner.metrics;
    assert_eq!(m.kms_hedges.with_label_values(&["r2"]).get(), 4);
}

/// A KMS call that panics (a bug in an adapter) fails in its own region
/// only: the read goes on to the next region, and the region's breaker
/// counts it as nothing.
#[tokio::test]
async fn a_panicking_call_fails_in_its_region_alone() {
    let rig = rig_with(no_cache());
    let created = rig.broker.get_or_create(&id("pc"), true).await.unwrap();
    rig.kms.set_fault(&r("r1"), Some(Fault::Panic));
    for _ in 0..5 {
        let read = rig.broker.get_or_create(&id("pc"), true).await.unwrap();
        assert_eq!(read.key.expose(), created.key.expose());
        assert_eq!(read.source, KeySource::Region(r("r2")));
    }
    let m = &rig.broker.inner.metrics;
    assert_eq!(
        m.kms_requests
            .with_label_values(&["r1", "decrypt", "error"])
            .get(),
        5
    );
    assert_eq!(
        m.region_breaker.with_label_values(&["r1", "closed"]).get(),
        1,
        "a bug is not an outage"
    );
}

/// `hedge_after_ms = 0` asks every region at once; the first answer wins.
#[tokio::test(start_paused = true)]
async fn hedge_after_zero_asks_every_region_at_once() {
    let rig = rig_with(BrokerSettings {
        hedge_after: Duration::ZERO,
        ..no_cache()
    });
    rig.broker.get_or_create(&id("z"), true).await.unwrap();
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Delay(Duration::from_millis(50))));
    let before = rig.kms.total_calls("decrypt");
    let started = Instant::now();
    let read = rig.broker.get_or_create(&id("z"), true).await.unwrap();
    assert_ne!(
        read.source,
        KeySource::Region(r("r1")),
        "a faster region wins"
    );
    assert_eq!(started.elapsed(), Duration::ZERO);
    // A call the winner left unstarted starts in a task of its own, at
    // once.
    tokio::task::yield_now().await;
    assert_eq!(
        rig.kms.total_calls("decrypt") - before,
        3,
        "one call per region"
    );
}

/// When every region's breaker is open, a request is answered at once
/// (503 with the time of the next probe), not after trying each region.
#[tokio::test(start_paused = true)]
async fn a_full_outage_answers_at_once_with_the_next_probe_time() {
    let rig = rig_with(BrokerSettings {
        cache_ttl: Duration::from_secs(1),
        stale_if_error: Duration::from_secs(600),
        ..settings()
    });
    let made = rig.broker.get_or_create(&id("o"), true).await.unwrap();
    for region in regions() {
        rig.kms
            .set_fault(&region, Some(Fault::Fail(KmsErrorKind::Unavailable)));
    }
    // Past the TTL: three refreshes fail in every region (each serves the
    // stale key) and open every breaker.
    tokio::time::advance(Duration::from_secs(2)).await;
    for _ in 0..3 {
        let stale = rig.broker.get_or_create(&id("o"), true).await.unwrap();
        assert_eq!(stale.source, KeySource::StaleCache);
    }
    let calls = rig.kms.total_calls("decrypt") + rig.kms.total_calls("generate_data_key");
    tokio::time::advance(Duration::from_secs(4)).await;
    let started = Instant::now();
    let err = rig
        .broker
        .get_or_create(&id("new"), true)
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO);
    match err {
        BrokerError::AllRegionsOpen { retry_after } => {
            assert_eq!(
                retry_after,
                Duration::from_secs(6),
                "the breakers reopen in 6 s"
            )
        }
        other => panic!("expected AllRegionsOpen, got {other}"),
    }
    // A cached key past its TTL is still served where stale_if_error allows.
    let stale = rig.broker.get_or_create(&id("o"), true).await.unwrap();
    assert_eq!(stale.source, KeySource::StaleCache);
    assert_eq!(stale.key.expose(), made.key.expose());
    assert_eq!(
        rig.kms.total_calls("decrypt") + rig.kms.total_calls("generate_data_key"),
        calls,
        "no KMS call while every breaker is open"
    );
}

/// A region that stops answering holds at most `max_in_flight_per_region`
/// calls; the rest move on to the next region.
#[tokio::test(start_paused = true)]
async fn a_hung_region_holds_at_most_its_in_flight_cap() {
    let rig = rig_with(BrokerSettings {
        max_in_flight_per_region: 2,
        hedge_budget_percent: 0,
        hedge_budget_burst: 0,
        ..no_cache()
    });
    let names: Vec<String> = (0..6).map(|i| format!("cap{i}")).collect();
    for name in &names {
        rig.broker.get_or_create(&id(name), true).await.unwrap();
    }
    let before = rig.kms.calls(&r("r1"), "decrypt");
    rig.kms.set_fault(&r("r1"), Some(Fault::Hang));
    let reads = names.iter().map(|name| {
        let broker = rig.broker.clone();
        let key = id(name);
        tokio::spawn(async move { broker.get_or_create(&key, true).await })
    });
    for read in futures::future::join_all(reads).await {
        assert_eq!(read.unwrap().unwrap().source, KeySource::Region(r("r2")));
    }
    assert_eq!(
        rig.kms.calls(&r("r1"), "decrypt") - before,
        2,
        "two calls held r1's slots; the other four moved on"
    );
    let m = &rig.broker.inner.metrics;
    assert_eq!(
        m.kms_requests
            .with_label_values(&["r1", "decrypt", "saturated"])
            .get(),
        4
    );
    assert_eq!(
        m.region_breaker.with_label_values(&["r1", "closed"]).get(),
        1,
        "waiting for a slot is not a region fault"
    );
}

#[tokio::test(start_paused = true)]
async fn a_healthy_preferred_region_gets_exactly_one_decrypt() {
    let rig = rig_with(no_cache());
    rig.broker.get_or_create(&id("one"), true).await.unwrap();
    rig.kms
        .set_fault(&r("r1"), Some(Fault::Delay(Duration::from_millis(100))));
    for _ in 0..10 {
        rig.broker.get_or_create(&id("one"), true).await.unwrap();
    }
    assert_eq!(rig.kms.total_calls("decrypt"), 10);
    assert_eq!(rig.kms.calls(&r("r1"), "decrypt"), 10);
}

#[tokio::test(start_paused = true)]
async fn a_create_hedges_past_a_hung_preferred_region() {
    let rig = rig_with(no_cache());
    rig.kms.set_fault(&r("r1"), Some(Fault::Hang));
    let started = Instant::now();
    let made = rig.broker.get_or_create(&id("g"), true).await.unwrap();
    assert!(made.created);
    assert_eq!(
        made.source,
        KeySource::Region(r("r2")),
        "generated by the hedge"
    );
    // hedge_after for GenerateDataKey, then the quorum (r3) plus hedge_after
    // for the hung r1's Encrypt: not call_timeout.
    assert_eq!(started.elapsed(), Duration::from_millis(500));
    let rec = rig.store.snapshot(&id("g")).unwrap();
    assert_eq!(
        rec.keys.keys().cloned().collect::<Vec<_>>(),
        vec![r("r2"), r("r3")]
    );
    let read = rig.broker.get_or_create(&id("g"), true).await.unwrap();
    assert_eq!(read.key.expose(), made.key.expose());
}
