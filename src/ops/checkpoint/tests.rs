//! Tests of checkpoint files and of a segment's walk.

use super::*;

/// A checkpoint resumes only the run it was saved for: against other
/// stores (or, for backfill, other regions) its cursors would skip
/// records there, so it is refused, naming what it is for.
#[test]
fn a_checkpoint_resumes_only_its_own_stores() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.json");
    let mut saved = Checkpoint::load_or_new(Some(&path), "copy", "copy from A to B", 2).unwrap();
    let after_7 = SegmentState {
        cursor: Some("after-7".into()),
        ..SegmentState::default()
    };
    saved.set(0, after_7, Some(&path)).unwrap();

    let again = Checkpoint::load_or_new(Some(&path), "copy", "copy from A to B", 2).unwrap();
    assert_eq!(again, saved);
    let err = Checkpoint::load_or_new(Some(&path), "copy", "copy from A to C", 2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("copy from A to B") && err.contains("would skip records"),
        "{err}"
    );
    // A file from before the scope was kept says nothing of its stores.
    let old = r#"{"command":"copy","segments":[{"cursor":"after-7","done":false},{"cursor":null,"done":false}]}"#;
    std::fs::write(&path, old).unwrap();
    let err = Checkpoint::load_or_new(Some(&path), "copy", "copy from A to B", 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("did not record its stores"), "{err}");
}

/// A segment carries what it could not settle, up to MAX_RETRY
/// records; a record past that, or one without an id to read it by,
/// holds the checkpoint where it was.
#[test]
fn a_walk_carries_unsettled_records_until_it_cannot() {
    let checkpoint = Mutex::new(Checkpoint::load_or_new(None, "copy", "A to B", 1).unwrap());
    let mut walk = Walk::resume(&checkpoint, 0, 1);
    walk.unsettled(Some("u/1"));
    walk.unsettled(Some("u/1"));
    walk.page_done(Some("p/1".into()), &checkpoint, None)
        .unwrap();
    let state = checkpoint.lock().unwrap().segments[0].clone();
    assert_eq!(state.cursor.as_deref(), Some("p/1"));
    assert_eq!(state.retry, ["u/1"]);

    // Resumed: the carried record is read again first, and carried on
    // when it is still not settled.
    let mut walk = Walk::resume(&checkpoint, 0, 1);
    let again = walk.next_retries(10);
    assert_eq!(again, [KeyId::parse("u/1").unwrap()]);
    assert!(!walk.retrying());
    walk.unsettled(Some("u/1"));
    for i in 2..=MAX_RETRY {
        walk.unsettled(Some(&format!("u/{i}")));
    }
    walk.page_done(Some("p/2".into()), &checkpoint, None)
        .unwrap();
    let state = checkpoint.lock().unwrap().segments[0].clone();
    assert_eq!(state.cursor.as_deref(), Some("p/2"));
    assert_eq!(state.retry.len(), MAX_RETRY);

    // One more than it carries: held at p/2 for the rest of the run.
    let mut walk = Walk::resume(&checkpoint, 0, 1);
    walk.unsettled(Some("u/extra"));
    walk.page_done(Some("p/3".into()), &checkpoint, None)
        .unwrap();
    walk.page_done(None, &checkpoint, None).unwrap();
    assert_eq!(checkpoint.lock().unwrap().segments[0], state);

    // A corrupt record whose id is not a key id cannot be read again.
    let fresh = Mutex::new(Checkpoint::load_or_new(None, "copy", "A to B", 1).unwrap());
    let mut walk = Walk::resume(&fresh, 0, 1);
    walk.unsettled(Some("bad id\n"));
    walk.page_done(Some("p/1".into()), &fresh, None).unwrap();
    assert_eq!(fresh.lock().unwrap().segments[0], SegmentState::default());
}

/// A checkpoint is written under a name an rkms that does not carry
/// records refuses (it would drop them), and one written by such an
/// rkms is resumed.
#[test]
fn a_checkpoint_is_written_so_older_rkms_refuse_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.json");
    let old = r#"{"command":"copy","scope":"A to B","segments":[{"cursor":"c/1","done":false}]}"#;
    std::fs::write(&path, old).unwrap();
    let loaded = Checkpoint::load_or_new(Some(&path), "copy", "A to B", 1).unwrap();
    assert_eq!(loaded.segments[0].cursor.as_deref(), Some("c/1"));
    loaded.save(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains(r#""command": "copy+retry+unreadable""#),
        "{text}"
    );
    // One written by an rkms that carried records by id only is resumed.
    let by_id = r#"{"command":"copy+retry","scope":"A to B","segments":[{"cursor":"c/2","done":false,"retry":["r/1"]}]}"#;
    std::fs::write(&path, by_id).unwrap();
    let loaded = Checkpoint::load_or_new(Some(&path), "copy", "A to B", 1).unwrap();
    assert_eq!(loaded.segments[0].retry, ["r/1"]);
    let err = Checkpoint::load_or_new(Some(&path), "backfill", "A to B", 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("is for `copy`"), "{err}");
}

/// A corrupt record whose stored id is not UTF-8 is named with U+FFFD,
/// which would find nothing when read again (the record would seem
/// deleted and leave the checkpoint), and one whose id is not a key id
/// cannot be read by it: both are carried by name, to be reported again
/// unread, and the checkpoint moves on. They used to hold it, and runs
/// limited to N records read the same N for ever.
#[test]
fn a_corrupt_record_with_an_unreadable_id_is_carried_by_name() {
    let checkpoint = Mutex::new(Checkpoint::load_or_new(None, "copy", "A to B", 1).unwrap());
    let mut walk = Walk::resume(&checkpoint, 0, 1);
    let corrupt = |id: &str| StoreError::Corrupt {
        id: id.into(),
        reason: "unreadable".into(),
    };
    assert_eq!(walk.corrupt(&corrupt("bad\u{FFFD}id")), "bad\u{FFFD}id");
    walk.corrupt(&corrupt("bad\u{1}id"));
    walk.corrupt(&corrupt("bad\u{1}id"));
    walk.corrupt(&corrupt("readable"));
    walk.page_done(Some("p/1".into()), &checkpoint, None)
        .unwrap();
    let state = checkpoint.lock().unwrap().segments[0].clone();
    assert_eq!(state.cursor.as_deref(), Some("p/1"));
    assert_eq!(state.unreadable, ["bad\u{FFFD}id", "bad\u{1}id"]);
    assert_eq!(state.retry, ["readable"]);

    // Resumed: reported from the checkpoint, and carried on.
    let mut walk = Walk::resume(&checkpoint, 0, 1);
    assert_eq!(walk.carried_unreadable(), ["bad\u{FFFD}id", "bad\u{1}id"]);
    assert_eq!(walk.next_retries(10), [KeyId::parse("readable").unwrap()]);
    walk.page_done(None, &checkpoint, None).unwrap();
    let state = checkpoint.lock().unwrap().segments[0].clone();
    assert!(state.done);
    assert_eq!(state.unreadable, ["bad\u{FFFD}id", "bad\u{1}id"]);
    assert!(state.retry.is_empty());

    // A corrupt record the store does not name holds the checkpoint.
    let fresh = Mutex::new(Checkpoint::load_or_new(None, "copy", "A to B", 1).unwrap());
    let mut walk = Walk::resume(&fresh, 0, 1);
    walk.corrupt(&StoreError::Other {
        op: "scan",
        source: "no id".into(),
    });
    walk.page_done(Some("p/1".into()), &fresh, None).unwrap();
    assert_eq!(fresh.lock().unwrap().segments[0], SegmentState::default());
}

/// A checkpoint that carries something other than a key id is refused
/// when loaded, not read again as one.
#[test]
fn a_checkpoint_carrying_a_bad_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cp.json");
    let text = r#"{"command":"copy","scope":"A to B","segments":[{"cursor":"c/1","done":false,"retry":["ok/1","bad\nid"]}]}"#;
    std::fs::write(&path, text).unwrap();
    let err = Checkpoint::load_or_new(Some(&path), "copy", "A to B", 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains(r#""bad\nid" is not a key id"#), "{err}");
}

/// A checkpoint is saved beside itself by bytes: a path that is not
/// UTF-8 is written, where its lossy spelling named a missing directory.
#[test]
fn a_checkpoint_path_need_not_be_utf8() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join(std::ffi::OsStr::from_bytes(b"bad\xffdir"));
    std::fs::create_dir(&odd).unwrap();
    let path = odd.join("cp.json");
    let mut saved = Checkpoint::load_or_new(Some(&path), "copy", "A to B", 1).unwrap();
    let state = SegmentState {
        cursor: Some("c/9".into()),
        done: false,
        retry: vec!["c/3".into()],
        unreadable: vec!["c\u{1}5".into()],
    };
    saved.set(0, state, Some(&path)).unwrap();
    assert_eq!(
        Checkpoint::load_or_new(Some(&path), "copy", "A to B", 1).unwrap(),
        saved
    );
}
