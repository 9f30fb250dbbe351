//! A zero-sized global recorder (one that forwards to a static, as a thin handle to a
//! process-wide exporter does) sees the calls' metrics, from every thread. Its own test
//! binary: a global recorder is set once, for the whole process.

mod common;
mod observing;

use common::{guard, lab, lab_client, Kind, LabServer};
use observing::{Forward, Totals, FORWARDED};
use rpc_core::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_sized_global_recorder_sees_the_calls() {
    assert_eq!(std::mem::size_of::<Forward>(), 0);
    let snapshotter = FORWARDED.snapshotter();
    // First a client and a server made with no recorder installed (so rpc-core has looked
    // for one, and found metrics' no-op fallback): their calls are not counted, before or
    // after the recorder is set, as the handles are made once.
    let (imp, _events) = lab();
    let server = Server::new().add_service(LabServer::new(imp));
    let (early, _early) = lab_client(Kind::MemoryPair, server).await;
    assert_eq!(guard(early.add(1, 1)).await.unwrap(), 2);

    metrics::set_global_recorder(Forward).expect("the only global recorder in this binary");
    assert_eq!(guard(early.add(1, 1)).await.unwrap(), 2);
    let mut totals = Totals::default();
    for kind in [Kind::MemoryPair, Kind::Tcp] {
        let (imp, _events) = lab();
        let server = Server::new().add_service(LabServer::new(imp));
        let (client, _h) = lab_client(kind, server).await;
        for i in 0..2 {
            assert_eq!(guard(client.add(i, 1)).await.unwrap(), i + 1, "{kind:?}");
        }
    }
    totals.add(&snapshotter);
    for side in ["rpc_client", "rpc_server"] {
        let started = totals.counter(&format!("{side}_calls_started_total"), "add", None);
        assert_eq!(started, 4, "{side}");
        let finished = totals.counter(&format!("{side}_calls_finished_total"), "add", Some("ok"));
        assert_eq!(finished, 4, "{side}");
    }
}
