//! Tests of the adapter against real files in a temporary directory.

mod unit {
    use super::super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    /// The keyring is written into a buffer sized before writing, so no
    /// outgrown copy of the master keys is freed unwiped: the size holds
    /// for any note and regions, escapes included.
    #[test]
    fn the_keyring_buffer_is_never_outgrown() {
        for note in [
            "",
            "plain note",
            "\u{1}\u{2}\"\\\n\t",
            &"\u{1f}".repeat(500),
        ] {
            let file = keyring::KeyringFile {
                format: keyring::KEYRING_FORMAT,
                note: note.to_owned(),
                master_keys: (0..20)
                    .map(|i| (format!("region-\u{1}{i}"), "A".repeat(44)))
                    .collect(),
            };
            let pretty = serde_json::to_vec_pretty(&file).unwrap();
            assert!(keyring::room_for(&file) >= pretty.len(), "{note:?}");
        }
    }

    /// Many first starts at once on one keyring path (two rkms processes
    /// sharing a data directory): every one ends up with the same master
    /// keys, so a key wrapped by one unwraps in all the others.
    #[tokio::test]
    async fn concurrent_first_opens_agree_on_the_master_keys() {
        for round in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("d{round}/keyring.json"));
            let rs = regions(&["a", "b"]);
            let opened: Vec<LocalKms> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..8)
                    .map(|_| s.spawn(|| LocalKms::open(&path, &rs).unwrap()))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let id = crate::domain::KeyId::parse("shared").unwrap();
            let (key, wrapped) = opened[0]
                .generate_data_key(&rs[0], 32, Context::Bound(&id))
                .await
                .unwrap();
            for kms in &opened {
                let back = kms
                    .decrypt(&rs[0], &wrapped.ciphertext, Context::Bound(&id))
                    .await
                    .unwrap();
                assert_eq!(back.expose(), key.expose());
            }
        }
    }
    /// The keyring removed, or replaced by another, while rkms runs: no
    /// key is wrapped (it could be unwrapped only while the process
    /// lives) and the key check fails, while stored keys still unwrap.
    /// The file restored, or written again with the same keys plus a
    /// region (another rkms's start), wrapping goes on.
    #[tokio::test]
    async fn a_keyring_removed_or_replaced_while_running_wraps_no_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let rs = regions(&["a", "b"]);
        let kms = LocalKms::open(&path, &rs).unwrap();
        let id = KeyId::parse("k").unwrap();
        let (key, wrapped) = kms
            .generate_data_key(&rs[0], 32, Context::Bound(&id))
            .await
            .unwrap();
        let saved = fs::read(&path).unwrap();

        fs::remove_file(&path).unwrap();
        let err = kms
            .generate_data_key(&rs[0], 32, Context::Bound(&id))
            .await
            .unwrap_err();
        assert_eq!(err.kind, KmsErrorKind::Misconfigured);
        let why = crate::report::chain(&err);
        assert!(why.contains("was removed while rkms ran"), "{why}");
        assert!(kms
            .encrypt(&rs[1], &key, Context::Bound(&id))
            .await
            .is_err());
        assert!(kms.check_key(&rs[0]).await.is_err());
        let back = kms
            .decrypt(&rs[0], &wrapped.ciphertext, Context::Bound(&id))
            .await
            .unwrap();
        assert_eq!(back.expose(), key.expose());

        // Another keyring in its place.
        let other = dir.path().join("other.json");
        LocalKms::open(&other, &rs).unwrap();
        fs::rename(&other, &path).unwrap();
        let why = crate::report::chain(&kms.check_key(&rs[0]).await.unwrap_err());
        assert!(
            why.contains("no longer holds the master key for a"),
            "{why}"
        );

        // Restored from a backup: a new file with the same keys.
        fs::write(&path, &saved).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        kms.generate_data_key(&rs[0], 32, Context::Bound(&id))
            .await
            .unwrap();
        // Another rkms adds a region: the file is written again, keeping
        // these keys.
        LocalKms::open(&path, &regions(&["a", "b", "c"])).unwrap();
        kms.generate_data_key(&rs[1], 32, Context::Bound(&id))
            .await
            .unwrap();
        kms.check_key(&rs[0]).await.unwrap();
    }

    /// A keyring configured through a symbolic link is checked as
    /// configured: the link pointed at a copy with the same keys (a Secret
    /// mount's update) passes, pointed at another keyring fails; its mode
    /// opened to others fails as a start would. It was watched at the file
    /// the link named at start: a copy was taken for a removal, and another
    /// keyring went unseen.
    #[tokio::test]
    async fn a_keyring_behind_a_link_is_checked_where_the_link_points_now() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let rs = regions(&["a"]);
        let (v1, v2, v3) = (
            dir.path().join("v1"),
            dir.path().join("v2"),
            dir.path().join("v3"),
        );
        for d in [&v1, &v2, &v3] {
            fs::create_dir(d).unwrap();
        }
        LocalKms::open(&v1.join("keyring.json"), &rs).unwrap();
        LocalKms::open(&v3.join("keyring.json"), &rs).unwrap();
        let link = dir.path().join("keyring.json");
        symlink(v1.join("keyring.json"), &link).unwrap();
        let kms = LocalKms::open(&link, &rs).unwrap();
        let id = KeyId::parse("k").unwrap();
        let point = |to: &std::path::Path| {
            let tmp = dir.path().join("next.lnk");
            symlink(to.join("keyring.json"), &tmp).unwrap();
            fs::rename(&tmp, &link).unwrap();
        };

        fs::copy(v1.join("keyring.json"), v2.join("keyring.json")).unwrap();
        fs::set_permissions(v2.join("keyring.json"), fs::Permissions::from_mode(0o600)).unwrap();
        point(&v2);
        fs::remove_dir_all(&v1).unwrap();
        kms.generate_data_key(&rs[0], 32, Context::Bound(&id))
            .await
            .unwrap();

        point(&v3);
        let why = crate::report::chain(&kms.check_key(&rs[0]).await.unwrap_err());
        assert!(
            why.contains("no longer holds the master key for a"),
            "{why}"
        );

        point(&v2);
        kms.check_key(&rs[0]).await.unwrap();
        fs::set_permissions(v2.join("keyring.json"), fs::Permissions::from_mode(0o644)).unwrap();
        let why = crate::report::chain(&kms.check_key(&rs[0]).await.unwrap_err());
        assert!(why.contains("cannot be read"), "{why}");
    }

    /// A keyring written again (a region added) keeps its owner: a tool run
    /// as root on the server's keyring must not leave it readable by root
    /// alone, which the server would find removed. Needs root to give a
    /// file away; skipped otherwise.
    #[tokio::test]
    async fn a_keyring_written_again_keeps_its_owner() {
        use std::os::unix::fs::MetadataExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        LocalKms::open(&path, &regions(&["a"])).unwrap();
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        LocalKms::open(&path, &regions(&["a", "b"])).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        assert!(LocalKms::open_existing(&path)
            .unwrap()
            .has_master_key(&Region::new("b")));
    }

    use crate::domain::KeyId;

    fn regions(names: &[&str]) -> Vec<Region> {
        names.iter().map(|n| Region::new(*n)).collect()
    }

    #[tokio::test]
    async fn round_trip_is_bound_to_region_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/keyring.json");
        let kms = LocalKms::open(&path, &regions(&["a", "b"])).unwrap();
        let id = KeyId::parse("x").unwrap();
        let other = KeyId::parse("y").unwrap();
        let (key, wrapped) = kms
            .generate_data_key(&Region::new("a"), 32, Context::Bound(&id))
            .await
            .unwrap();
        let back = kms
            .decrypt(&Region::new("a"), &wrapped.ciphertext, Context::Bound(&id))
            .await
            .unwrap();
        assert_eq!(back.expose(), key.expose());
        for (region, ctx) in [
            ("a", Context::Bound(&other)),
            ("a", Context::Legacy),
            ("b", Context::Bound(&id)),
        ] {
            let err = kms
                .decrypt(&Region::new(region), &wrapped.ciphertext, ctx)
                .await
                .unwrap_err();
            assert_eq!(err.kind, KmsErrorKind::Integrity);
        }
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(
            dir_mode, 0o700,
            "a directory rkms creates for the keyring is owner-only"
        );
    }

    /// A keyring reached through a symbolic link gains a new region's
    /// master key in the file the link names; the link stays a link (it
    /// used to be replaced by a file, leaving the shared keyring without
    /// the key). Opening it as it is writes nothing and reads every key.
    #[test]
    fn a_keyring_behind_a_link_is_written_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("shared.json");
        let link = dir.path().join("keyring.json");
        drop(LocalKms::open(&target, &regions(&["a"])).unwrap());
        std::os::unix::fs::symlink("shared.json", &link).unwrap();
        let before = std::fs::read(&target).unwrap();
        let existing = LocalKms::open_existing(&link).unwrap();
        assert_eq!(existing.keys.len(), 1);
        assert_eq!(std::fs::read(&target).unwrap(), before, "read only");
        assert!(!existing.has_master_key(&Region::new("b")));
        drop(LocalKms::open(&link, &regions(&["a", "b"])).unwrap());
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let shared = std::fs::read_to_string(&target).unwrap();
        assert!(
            shared.contains("\"b\""),
            "the new key is in the shared file"
        );
        assert!(matches!(
            LocalKms::open_existing(&dir.path().join("none.json")),
            Err(KeyringError::Missing { .. })
        ));
    }

    /// A temporary file left by a write that was killed (here under this
    /// process's id, as a container's server is process 1 at every start)
    /// does not stop the keyring being written, and a write leaves no
    /// temporary file of its own.
    #[test]
    fn a_write_killed_before_does_not_block_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let left = dir
            .path()
            .join(format!(".keyring.json.tmp-{:032x}", std::process::id()));
        fs::write(&left, b"{\"partial").unwrap();
        drop(LocalKms::open(&path, &regions(&["a"])).unwrap());
        assert!(LocalKms::open_existing(&path)
            .unwrap()
            .has_master_key(&Region::new("a")));
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let leftover = left.file_name().unwrap().to_string_lossy().into_owned();
        let expected = [leftover.as_str(), "keyring.json", "keyring.json.lock"];
        assert_eq!(names, expected);
        // Once it is old enough that no write can still be making it, the
        // next write removes it: it may hold master keys.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        fs::File::options()
            .write(true)
            .open(&left)
            .unwrap()
            .set_modified(old)
            .unwrap();
        drop(LocalKms::open(&path, &regions(&["a", "b"])).unwrap());
        assert!(!left.exists(), "an abandoned temporary file is removed");
    }

    #[tokio::test]
    async fn reopening_keeps_keys_and_adding_a_region_keeps_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let id = KeyId::parse("x").unwrap();
        let kms = LocalKms::open(&path, &regions(&["a"])).unwrap();
        let (key, wrapped) = kms
            .generate_data_key(&Region::new("a"), 32, Context::Bound(&id))
            .await
            .unwrap();
        drop(kms);
        let kms = LocalKms::open(&path, &regions(&["a", "b"])).unwrap();
        let back = kms
            .decrypt(&Region::new("a"), &wrapped.ciphertext, Context::Bound(&id))
            .await
            .unwrap();
        assert_eq!(back.expose(), key.expose());
        assert!(kms
            .encrypt(&Region::new("b"), &key, Context::Bound(&id))
            .await
            .is_ok());
    }

    /// A keyring that names a region twice is refused and left as it is.
    /// It was read as the last entry, and a start that added a region
    /// wrote the keyring back without the other master key: the keys it
    /// wrapped were lost for good.
    #[test]
    fn a_keyring_naming_a_region_twice_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        LocalKms::open(&path, &regions(&["a"])).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let real = doc["master_keys"]["a"].as_str().unwrap().to_string();
        let other = B64.encode([9u8; 32]);
        let twice = format!(
            r#"{{"format": 1, "note": "n", "master_keys": {{"a": "{real}", "a": "{other}"}}}}"#
        );
        fs::write(&path, &twice).unwrap();
        let err = LocalKms::open(&path, &regions(&["a", "b"])).unwrap_err();
        assert!(matches!(err, KeyringError::Corrupt { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("names one region twice"), "{message}");
        assert!(!message.contains(&real) && !message.contains(&other));
        assert_eq!(fs::read_to_string(&path).unwrap(), twice);
    }

    #[test]
    fn corrupt_or_exposed_keyrings_are_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        fs::write(&path, b"{not json").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let err = LocalKms::open(&path, &regions(&["a"])).unwrap_err();
        assert!(matches!(err, KeyringError::Corrupt { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"{not json");

        LocalKms::open(&dir.path().join("ok.json"), &regions(&["a"])).unwrap();
        let ok = dir.path().join("ok.json");
        fs::set_permissions(&ok, fs::Permissions::from_mode(0o644)).unwrap();
        let err = LocalKms::open(&ok, &regions(&["a"])).unwrap_err();
        assert!(
            matches!(err, KeyringError::Permissions { mode: 0o644, .. }),
            "{err}"
        );
        assert!(!err.to_string().contains('\n'));
    }
}
