//! `--max-records` shared by a backfill's segments.

use std::sync::Mutex;

/// `--max-records`, shared by the segments: each takes up to a page of
/// what is left before it reads, and gives back what its page did not use.
pub(super) struct Limit {
    /// Records not yet taken, and records taken by pages still being read.
    left: Mutex<(u64, u64)>,
    given_back: tokio::sync::Notify,
}

impl Limit {
    pub(super) fn new(max: u64) -> Self {
        Self {
            left: Mutex::new((max, 0)),
            given_back: tokio::sync::Notify::new(),
        }
    }

    /// Up to `page` records; 0 only once every record of the limit is
    /// used. While other segments' pages may still give some back, wait
    /// for them rather than end the segment with records unused.
    pub(super) async fn reserve(&self, page: usize) -> usize {
        loop {
            let given_back = self.given_back.notified();
            {
                let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
                let (free, out) = &mut *left;
                if *free > 0 {
                    let got = (*free).min(page as u64);
                    *free -= got;
                    *out += got;
                    return got as usize;
                }
                if *out == 0 {
                    return 0;
                }
            }
            given_back.await;
        }
    }

    /// A page reserved `reserved` records and read `used` of them.
    pub(super) fn settle(&self, reserved: usize, used: usize) {
        let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        let (free, out) = &mut *left;
        *free += reserved.saturating_sub(used) as u64;
        *out = out.saturating_sub(reserved as u64);
        drop(left);
        self.given_back.notify_waiters();
    }
}
