//! Arbitrary text -> the `netns` source's decoders: `/proc/<pid>/net/snmp`
//! (`parse_snmp`), `tcp`/`tcp6` rows and tables (`parse_tcp_table`,
//! `summarize`), `raw`/`raw6`/`packet` tables (`parse_raw_table`,
//! `parse_packet_table`) and the delta tracker over two readings. Never panics;
//! every row is decoded or counted; summaries never exceed the rows; a
//! first reading reports no deltas; a second reading of the same text
//! reports zero deltas and no new connection.
#![no_main]

use fedmesh_node::telemetry::netns::{
    MAX_SOCKETS, NetnsReading, NetnsStats, NetnsTracker, RawSockets, parse_packet_table,
    parse_raw_table, parse_snmp, parse_tcp_table, summarize,
};
use fedmesh_node::telemetry::{ContainerId, Event};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_snmp(text);
    let mut socks = Vec::new();
    let st = parse_tcp_table(text, &mut socks);
    assert_eq!(st.rows as usize, socks.len());
    assert!(socks.len() <= MAX_SOCKETS);
    let sum = summarize(&socks);
    assert!(sum.outbound.len() <= socks.len());
    assert!(sum.listening as usize + sum.syn_sent as usize <= socks.len());
    assert!(sum.remote_endpoints as usize <= socks.len());
    assert!(sum.syn_sent_ports <= sum.syn_sent);
    let lines = text.lines().count() as u64;
    let mut raw = RawSockets::default();
    parse_raw_table(text, &mut raw);
    assert_eq!(raw.packet, 0);
    assert!(u64::from(raw.raw) + u64::from(raw.icmp) + u64::from(raw.malformed) <= lines);
    assert!(raw.raw as usize + raw.icmp as usize <= MAX_SOCKETS);
    let mut packet = RawSockets::default();
    parse_packet_table(text, &mut packet);
    assert_eq!(packet.raw + packet.icmp, 0);
    assert!(u64::from(packet.packet) + u64::from(packet.malformed) <= lines);
    // The same text as every file of one namespace, read twice.
    let reading = NetnsReading {
        netns: 1,
        members: vec![ContainerId("c".into())],
        snmp: text.to_string(),
        tcp: Some(text.to_string()),
        tcp6: Some(text.to_string()),
        raw: Some(text.to_string()),
        raw6: Some(text.to_string()),
        packet: Some(text.to_string()),
    };
    let mut t = NetnsTracker::new();
    let mut stats = NetnsStats::default();
    for (i, ts) in [0u64, 10_000].into_iter().enumerate() {
        let ev = t.step(ts, std::slice::from_ref(&reading), &mut stats);
        assert!(ev.len() <= 1);
        for e in &ev {
            let Event::Net { net, .. } = e else {
                panic!("not a net event")
            };
            assert_eq!(net.active_opens + net.attempt_fails + net.out_rsts, 0);
            assert!(net.new_remotes.len() <= net.new_remotes_total as usize);
            if i == 1 {
                assert_eq!(net.new_remotes_total, 0);
            }
        }
    }
});
