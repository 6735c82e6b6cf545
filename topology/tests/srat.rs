//! The SRAT parser against tables built by topology::fixture::SratBuilder: flags, Generic
//! Initiator handles in both byte orders, and the kernel's PXM -> node numbering.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use topology::fixture::{MEM_ENABLED, MEM_HOT_PLUGGABLE, MEM_NON_VOLATILE, MEM_SPECIFIC_PURPOSE, SratBuilder};
use topology::srat::{SratError, parse};

#[test]
fn memory_flags_are_decoded() {
    let t = SratBuilder::new()
        .memory(0, 0, GIB, MEM_ENABLED)
        .memory(1, GIB, GIB, MEM_ENABLED | MEM_SPECIFIC_PURPOSE)
        .memory(2, 2 * GIB, GIB, MEM_ENABLED | MEM_HOT_PLUGGABLE | MEM_NON_VOLATILE)
        .memory(3, 3 * GIB, GIB, 0)
        .build();
    let s = parse(&t).unwrap();
    let flags: Vec<(bool, bool, bool, bool)> = s
        .memory
        .iter()
        .map(|m| (m.enabled(), m.hot_pluggable(), m.non_volatile(), m.specific_purpose()))
        .collect();
    assert_eq!(
        flags,
        vec![
            (true, false, false, false),
            (true, false, false, true),
            (true, true, true, false),
            (false, false, false, false)
        ]
    );
    // Disabled entries get no node.
    assert_eq!(
        s.pxm_to_node.iter().map(|(p, n)| (*p, *n)).collect::<Vec<_>>(),
        vec![(0, 0), (1, 1), (2, 2)]
    );
}

#[test]
fn generic_initiator_handles_in_both_byte_orders_resolve_to_the_present_function() {
    let gpu = pci("0000:c1:02.3");
    for spec_order in [true, false] {
        let s = parse(&SratBuilder::new().generic_initiator_pci(4, gpu, spec_order).build()).unwrap();
        let gi = &s.initiators[0];
        assert_eq!((gi.pxm, gi.enabled, gi.port), (4, true, false));
        assert_eq!(
            gi.resolve(|address| [pci("0000:00:01.0"), gpu].contains(&address)),
            gpu,
            "spec_order={spec_order}"
        );
    }
    // When neither reading is present, the spec order is reported.
    let s = parse(&SratBuilder::new().generic_initiator_pci(4, gpu, true).build()).unwrap();
    assert_eq!(s.initiators[0].resolve(|_| false), gpu);
}

#[test]
fn linux_numbers_processor_and_initiator_domains_before_memory_only_ones() {
    // Table order: memory of PXM 7 first, then CPUs in PXM 5 and 9, a GI in PXM 3, memory of
    // PXM 5 and 1. Kernel: 5 -> 0, 9 -> 1, 3 -> 2 (first pass), then 7 -> 3, 1 -> 4.
    let t = SratBuilder::new()
        .memory(7, 0, GIB, MEM_ENABLED | MEM_SPECIFIC_PURPOSE)
        .lapic(5, 0)
        .x2apic(9, 1)
        .lapic(5, 2)
        .generic_initiator_pci(3, pci("0000:41:00.0"), true)
        .memory(5, GIB, GIB, MEM_ENABLED)
        .memory(1, 2 * GIB, GIB, MEM_ENABLED)
        .build();
    let s = parse(&t).unwrap();
    assert_eq!(
        s.pxm_to_node.iter().map(|(p, n)| (*p, *n)).collect::<Vec<_>>(),
        vec![(1, 4), (3, 2), (5, 0), (7, 3), (9, 1)]
    );
    assert_eq!(s.pxm_of(3), Some(7));
    assert_eq!(s.memory_of_node(3).map(|m| m.length).sum::<u64>(), GIB);
}

#[test]
fn lapic_proximity_domain_uses_all_four_bytes() {
    let s = parse(&SratBuilder::new().lapic(0x0102_0304, 0).build()).unwrap();
    assert_eq!(s.processor_pxms, vec![0x0102_0304]);
}

#[test]
fn broken_tables_are_errors() {
    let good = SratBuilder::new().lapic(0, 0).memory(0, 0, GIB, MEM_ENABLED).build();
    assert!(parse(&good).is_ok());
    assert_eq!(parse(&good[..30]), Err(SratError::TooShort(30)));
    let mut bad = good.clone();
    bad[0] = b'X';
    assert_eq!(parse(&bad), Err(SratError::Signature("XRAT".into())));
    assert_eq!(
        parse(&good[..good.len() - 1]),
        Err(SratError::Truncated {
            declared: good.len(),
            actual: good.len() - 1
        })
    );
    let mut bad = good.clone();
    bad[70] ^= 1;
    assert!(matches!(parse(&bad), Err(SratError::Checksum(_))));
    // A memory entry whose length byte is too small for its fields.
    let t = SratBuilder::new().raw(&[1, 8, 0, 0, 0, 0, 0, 0]).build();
    assert_eq!(
        parse(&t),
        Err(SratError::BadSubtable {
            offset: 48,
            kind: 1,
            length: 8
        })
    );
    // Unknown subtable types are skipped by their length.
    let t = SratBuilder::new().raw(&[0x42, 4, 0, 0]).lapic(1, 0).build();
    assert_eq!(parse(&t).unwrap().processor_pxms, vec![1]);
}

#[test]
fn random_subtables_with_valid_checksums_never_panic() {
    // Deterministic pseudo-random bodies (xorshift), header and checksum valid, so the subtable
    // walker sees every kind of length/type combination.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut ok = 0;
    for _ in 0..3000 {
        let len = (next() % 200) as usize;
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Bias towards known types so their field readers run.
        if let Some(b) = body.first_mut() {
            *b %= 8;
        }
        if parse(&SratBuilder::new().raw(&body).build()).is_ok() {
            ok += 1;
        }
    }
    // Some of them are well-formed by chance (e.g. empty bodies).
    assert!(ok > 0);
}
