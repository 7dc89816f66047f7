//! Arbitrary bytes -> a stream of telemetry events (decoded by hand, a few
//! bytes per field) pushed into a `WindowBuilder` and closed at increasing
//! ends: never panics, and every emitted feature is finite, every window
//! well-formed and sorted by container.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fedmesh_node::detection::features::WindowBuilder;
use fedmesh_node::telemetry::{ContainerId, Event, KernelEventKind, ResourceCounters};
use libfuzzer_sys::fuzz_target;

/// Reads fixed-size fields from the input, zero-padding at the end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.u8();
        }
        u64::from_le_bytes(b)
    }
    /// A counter value: small, huge or anything, so resets and overflows
    /// both show up.
    fn counter(&mut self) -> u64 {
        match self.u8() % 4 {
            0 => u64::from(self.u16()),
            1 => u64::MAX - u64::from(self.u8()),
            _ => self.u64(),
        }
    }
}

const KINDS: [KernelEventKind; 10] = [
    KernelEventKind::Setuid,
    KernelEventKind::Capset,
    KernelEventKind::Mount,
    KernelEventKind::Unshare,
    KernelEventKind::Setns,
    KernelEventKind::Ptrace,
    KernelEventKind::ModuleLoad,
    KernelEventKind::SensitiveFileRead,
    KernelEventKind::SensitiveFileWrite,
    KernelEventKind::PacketSocket,
];

fuzz_target!(|data: &[u8]| {
    let mut r = Reader(data);
    let mut b = WindowBuilder::new();
    let mut end: u64 = 0;
    while !r.is_empty() {
        let tag = r.u8();
        let container = ContainerId(format!("c{}", tag >> 5));
        // Timestamps near the current window (sometimes far off) so both
        // in-order and out-of-order streams are exercised.
        let ts_ms = match r.u8() % 4 {
            0 => r.u64(),
            _ => end.saturating_add(u64::from(r.u16())).saturating_sub(1000),
        };
        let ev = match tag & 0x07 {
            0 | 1 => Event::Sample {
                container,
                ts_ms,
                counters: ResourceCounters {
                    cpu_usage_usec: r.counter(),
                    nr_periods: r.counter(),
                    nr_throttled: r.counter(),
                    memory_bytes: r.counter(),
                    io_read_bytes: r.counter(),
                    io_write_bytes: r.counter(),
                    net_rx_bytes: r.counter(),
                    net_tx_bytes: r.counter(),
                    net_rx_packets: r.counter(),
                    net_tx_packets: r.counter(),
                    pids: r.counter(),
                },
            },
            2 => Event::Exec {
                container,
                ts_ms,
                binary: format!("/bin/b{}", r.u8()),
            },
            3 => {
                let dst_ip = if r.u8() & 1 == 0 {
                    IpAddr::V4(Ipv4Addr::from(u32::from(r.u16())))
                } else {
                    IpAddr::V6(Ipv6Addr::from(u128::from(r.u64())))
                };
                Event::Connect {
                    container,
                    ts_ms,
                    dst_ip,
                    dst_port: r.u16(),
                }
            }
            4 => Event::Kernel {
                container,
                ts_ms,
                kind: KINDS[usize::from(r.u8()) % KINDS.len()],
                detail: None,
            },
            _ => {
                // Close the window at a later end.
                end = end.saturating_add(u64::from(r.u16()));
                check(&b.close(end), end);
                continue;
            }
        };
        b.push(&ev);
    }
    end = end.saturating_add(1);
    check(&b.close(end), end);
    assert!(b.known_containers() <= 8);
});

fn check(windows: &[fedmesh_node::detection::features::FeatureWindow], end: u64) {
    for w in windows {
        assert_eq!(w.end_ms, end);
        assert!(w.start_ms <= w.end_ms);
        for (i, f) in w.features.iter().enumerate() {
            assert!(f.is_finite(), "feature {i} of {} is {f}", w.container);
        }
    }
    assert!(windows.windows(2).all(|p| p[0].container < p[1].container));
}
