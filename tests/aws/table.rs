//! A table deleted, or made again, under running servers holds none of
//! the records written before: no server may create a second key there.

use crate::helpers::{item, no_cache, serve, Server};
use crate::moto::{create_table, dynamo_client, Cloud, TABLE};
use crate::preflight::readyz;

async fn delete_table(cloud: &Cloud) {
    dynamo_client(&cloud.dynamo.endpoint)
        .await
        .delete_table()
        .table_name(TABLE)
        .send()
        .await
        .unwrap();
}

/// Readiness fails naming the store, and an id the table lacks is 503
/// whether or not it may be created: never a new key, never a 404.
async fn refuses_the_table(server: &Server, ids: &[&str]) {
    let (status, body) = readyz(&server.base).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["store"], "failed", "{body}");
    for id in ids {
        for create in [true, false] {
            let (status, body) = server.get(id, create).await;
            assert_eq!(status, 503, "{id} create={create}: {body}");
            assert_eq!(body["error_type"], "ServiceUnavailable", "{body}");
        }
    }
}

/// Two servers share a table: one caches keys, one does not. The table is
/// deleted and made again. The first sees it at its next readiness probe
/// (another table of the same name), the second at its next call (no
/// table). Neither creates anything in the new table until restarted; the
/// cached key is still served, as it is the id's key.
#[tokio::test]
async fn a_table_made_again_under_running_servers_gets_no_second_keys() {
    let cloud = Cloud::start(false).await;
    let cached = serve(cloud.settings()).await;
    let uncached = serve(no_cache(&cloud)).await;
    let key = cached.key("again/1").await;
    assert_eq!(uncached.key("again/1").await, key);

    delete_table(&cloud).await;
    // A call in the gap finds no table.
    let (status, body) = uncached.get("again/2", true).await;
    assert_eq!(status, 503, "{body}");
    create_table(&cloud.dynamo.endpoint, TABLE).await;

    // The first call after the table is back: still refused, as the table
    // that was there at start is gone, before any probe.
    let (status, body) = uncached.get("again/1", true).await;
    assert_eq!(status, 503, "{body}");
    refuses_the_table(&uncached, &["again/1", "again/new"]).await;
    refuses_the_table(&cached, &["again/new"]).await;
    assert_eq!(
        cached.key("again/1").await,
        key,
        "the cached key is the id's key"
    );
    for id in ["again/1", "again/2", "again/new"] {
        assert!(
            item(&cloud, id).await.is_none(),
            "{id} was written to the new table"
        );
    }

    // A restart accepts the table there now.
    drop(uncached);
    let restarted = serve(no_cache(&cloud)).await;
    let (status, body) = readyz(&restarted.base).await;
    assert_eq!(status, 200, "{body}");
}

/// The table deleted and made again with no call in between and no
/// readiness probe since: the next create looks at the table first (its
/// last look being over a second old), finds another one, and refuses. A
/// review had an existing id given a second key in that gap.
#[tokio::test]
async fn a_create_looks_at_the_table_before_writing_into_it() {
    let cloud = Cloud::start(false).await;
    let server = serve(no_cache(&cloud)).await;
    let key = server.key("gap/1").await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    delete_table(&cloud).await;
    create_table(&cloud.dynamo.endpoint, TABLE).await;
    let (status, body) = server.get("gap/1", true).await;
    assert_eq!(status, 503, "a new key for an id that had {key}: {body}");
    assert!(
        item(&cloud, "gap/1").await.is_none(),
        "written to the new table"
    );
    refuses_the_table(&server, &["gap/2"]).await;
}
