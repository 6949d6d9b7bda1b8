//! Issue 12's side-by-side benchmark: passvm, QEMU and Cloud Hypervisor in one L1, the
//! same L2, interleaved (`resources/scenarios/peers-bench.sh`). It prints figures and
//! asserts only that every run happened and ended cleanly; the figures belong in
//! docs/performance.md with their date.
//!
//! Run it with `resources/bed.sh bench --peers [--ch-source DIR --micro-http-source DIR]`,
//! which builds the L1 image with the peers first (`--l1 peers`).

mod bed;

use std::collections::BTreeMap;
use std::time::Duration;

use bed::{Device, L1Kernel, Scenario};

/// One run's figures, from a `bench` marker of peers-bench.sh.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    peer: String,
    case: String,
    init_ms: Option<u64>,
    total_ms: Option<u64>,
    l2_init_ms: Option<u64>,
    rss_kib: Option<u64>,
    mem_mib: Option<u64>,
    rc: String,
}

/// Parses `peer=P case=C run=I init_ms=N total_ms=N l2_init_s=S rss_kib=N mem_mib=N rc=R`;
/// unknown or unmeasured values (`-1`, `-`, `?`) are `None`.
fn parse_run(marker: &str) -> Option<Run> {
    let kv: BTreeMap<&str, &str> = marker
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    let num = |k: &str| kv.get(k).and_then(|v| v.parse::<u64>().ok());
    Some(Run {
        peer: kv.get("peer")?.to_string(),
        case: kv.get("case")?.to_string(),
        init_ms: num("init_ms"),
        total_ms: num("total_ms"),
        l2_init_ms: kv
            .get("l2_init_s")
            .and_then(|v| v.parse::<f64>().ok())
            .map(|s| (s * 1000.0).round() as u64),
        rss_kib: num("rss_kib"),
        mem_mib: num("mem_mib"),
        rc: kv.get("rc")?.to_string(),
    })
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    v.sort_unstable();
    (!v.is_empty()).then(|| v[(v.len() - 1) / 2])
}

/// The VMM's own memory: peak RSS less the guest RAM. Only meaningful where the guest
/// RAM is all resident (pinned for a device); elsewhere the RSS itself is reported.
fn overhead_mib(r: &Run) -> Option<u64> {
    let rss = r.rss_kib? / 1024;
    match r.case.as_str() {
        "none" => Some(rss),
        _ => Some(rss.saturating_sub(r.mem_mib?)),
    }
}

/// The medians of one (case, peer) for each figure.
fn medians(runs: &[&Run]) -> [Option<u64>; 4] {
    let col = |f: &dyn Fn(&Run) -> Option<u64>| median(runs.iter().filter_map(|r| f(r)).collect());
    [
        col(&|r| r.init_ms),
        col(&|r| r.total_ms),
        col(&|r| r.l2_init_ms),
        col(&overhead_mib),
    ]
}

/// passvm's figure over the lower of the peers' ("0.62x": passvm takes 62% of the best).
fn ratio(passvm: Option<u64>, peers: &[Option<u64>]) -> String {
    match (passvm, peers.iter().flatten().min()) {
        (Some(p), Some(&best)) if best > 0 => format!("{:.2}x", p as f64 / best as f64),
        _ => "-".into(),
    }
}

fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The table: per case and figure, each VMM's median and passvm's ratio to the best peer.
fn table(runs: &[Run]) -> String {
    let mut peers: Vec<&str> = Vec::new();
    let mut cases: Vec<&str> = Vec::new();
    for r in runs {
        if !peers.contains(&r.peer.as_str()) {
            peers.push(&r.peer);
        }
        if !cases.contains(&r.case.as_str()) {
            cases.push(&r.case);
        }
    }
    let figures = [
        "start -> L2 init (ms)",
        "start -> exit (ms)",
        "L2 uptime at init (ms)",
        "VMM memory (MiB)",
    ];
    let mut out = format!(
        "| case | figure | {} | passvm / best peer |\n",
        peers.join(" | ")
    );
    out.push_str(&format!("|{}\n", "---|".repeat(peers.len() + 3)));
    for case in &cases {
        let per_peer: Vec<[Option<u64>; 4]> = peers
            .iter()
            .map(|p| {
                let rs: Vec<&Run> = runs
                    .iter()
                    .filter(|r| r.case == *case && r.peer == *p)
                    .collect();
                medians(&rs)
            })
            .collect();
        for (i, figure) in figures.iter().enumerate() {
            let cells: Vec<String> = per_peer.iter().map(|m| show(m[i])).collect();
            let passvm = peers
                .iter()
                .position(|p| *p == "passvm")
                .and_then(|k| per_peer[k][i]);
            let others: Vec<Option<u64>> = peers
                .iter()
                .zip(&per_peer)
                // passvm's own variants (passvm-bb) are not peers.
                .filter(|(p, _)| !p.starts_with("passvm"))
                .map(|(_, m)| m[i])
                .collect();
            out.push_str(&format!(
                "| {case} | {figure} | {} | {} |\n",
                cells.join(" | "),
                ratio(passvm, &others)
            ));
        }
    }
    out
}

#[test]
fn markers_parse_and_the_table_takes_medians_and_the_best_peer() {
    let runs: Vec<Run> = [
        "peer=passvm case=blk run=1 init_ms=900 total_ms=1500 l2_init_s=0.61 rss_kib=300000 mem_mib=256 rc=0",
        "peer=passvm case=blk run=2 init_ms=700 total_ms=1300 l2_init_s=0.55 rss_kib=301000 mem_mib=256 rc=0",
        "peer=passvm case=blk run=3 init_ms=800 total_ms=1400 l2_init_s=0.58 rss_kib=299000 mem_mib=256 rc=0",
        "peer=qemu case=blk run=1 init_ms=2000 total_ms=2600 l2_init_s=1.2 rss_kib=400000 mem_mib=256 rc=0",
        "peer=ch case=blk run=1 init_ms=1600 total_ms=2000 l2_init_s=0.9 rss_kib=290000 mem_mib=256 rc=0",
        "peer=ch case=none run=1 init_ms=-1 total_ms=500 l2_init_s=- rss_kib=? mem_mib=256 rc=1",
        "peer=passvm-bb case=blk run=1 init_ms=100 total_ms=200 l2_init_s=0.1 rss_kib=262144 mem_mib=256 rc=0",
    ]
    .iter()
    .map(|m| parse_run(m).unwrap())
    .collect();
    assert_eq!(runs[5].init_ms, None);
    assert_eq!(runs[5].l2_init_ms, None);
    assert_eq!(runs[0].l2_init_ms, Some(610));
    let t = table(&runs);
    assert!(
        t.starts_with("| case | figure | passvm | qemu | ch | passvm-bb | passvm / best peer |"),
        "{t}"
    );
    // passvm's median 800 ms against the best peer, CH's 1600 ms (passvm-bb is no peer).
    assert!(
        t.contains("| blk | start -> L2 init (ms) | 800 | 2000 | 1600 | 100 | 0.50x |"),
        "{t}"
    );
    // Memory: 292 MiB (299000 KiB) - 256 against CH's 283 - 256 = 27.
    assert!(
        t.contains("| blk | VMM memory (MiB) | 36 | 134 | 27 | 0 | 1.33x |"),
        "{t}"
    );
    assert!(
        t.contains("| none | start -> exit (ms) | - | - | 500 | - | - |"),
        "{t}"
    );
    assert_eq!(
        parse_run("case=blk"),
        None,
        "a marker without its VMM is no run"
    );
}

/// One read measurement, from a `read` marker: `peer=P kind=K run=I ms=N`.
fn parse_read(marker: &str) -> Option<(String, String, u64)> {
    let kv: BTreeMap<&str, &str> = marker
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    Some((
        kv.get("peer")?.to_string(),
        kv.get("kind")?.to_string(),
        kv.get("ms")?.parse().ok()?,
    ))
}

/// MiB read per measurement of each kind (resources/lib/read-bench.sh).
fn read_mib(kind: &str) -> f64 {
    match kind {
        "read4k_ms" => 16.0,
        _ => 128.0,
    }
}

/// The reads table: per kind, each reader's median time and throughput, passvm's time
/// over the best peer's, and passvm's throughput against L1 reading the disk itself.
fn read_table(reads: &[(String, String, u64)]) -> String {
    let mut readers: Vec<&str> = Vec::new();
    let mut kinds: Vec<&str> = Vec::new();
    for (p, k, _) in reads {
        if !readers.contains(&p.as_str()) {
            readers.push(p);
        }
        if !kinds.contains(&k.as_str()) {
            kinds.push(k);
        }
    }
    let mut out = format!(
        "| reads | {} | passvm / best peer | passvm / L1 |\n",
        readers.join(" | ")
    );
    out.push_str(&format!("|{}\n", "---|".repeat(readers.len() + 3)));
    for kind in &kinds {
        let med: Vec<Option<u64>> = readers
            .iter()
            .map(|r| {
                median(
                    reads
                        .iter()
                        .filter(|(p, k, _)| p == r && k == kind)
                        .map(|x| x.2)
                        .collect(),
                )
            })
            .collect();
        let at = |name: &str| readers.iter().position(|r| *r == name).and_then(|i| med[i]);
        let peers: Vec<Option<u64>> = readers
            .iter()
            .zip(&med)
            .filter(|(r, _)| !r.starts_with("passvm") && **r != "L1")
            .map(|(_, m)| *m)
            .collect();
        let cells: Vec<String> = med
            .iter()
            .map(|m| match m {
                Some(ms) => format!(
                    "{ms} ms ({:.0} MiB/s)",
                    read_mib(kind) * 1000.0 / (*ms).max(1) as f64
                ),
                None => "-".into(),
            })
            .collect();
        let label = match *kind {
            "read4k_ms" => "4096 x 4 KiB",
            _ => "128 x 1 MiB",
        };
        out.push_str(&format!(
            "| {label} | {} | {} | {} |\n",
            cells.join(" | "),
            ratio(at("passvm"), &peers),
            ratio(at("passvm"), &[at("L1")])
        ));
    }
    out
}

#[test]
fn the_read_table_compares_passvm_with_the_peers_and_with_l1() {
    let reads: Vec<_> = [
        "peer=L1 kind=read4k_ms run=0 ms=2000",
        "peer=passvm kind=read4k_ms run=1 ms=1000",
        "peer=qemu kind=read4k_ms run=1 ms=1600",
        "peer=ch kind=read4k_ms run=1 ms=1250",
    ]
    .iter()
    .map(|m| parse_read(m).unwrap())
    .collect();
    let t = read_table(&reads);
    assert!(
        t.contains("| 4096 x 4 KiB | 2000 ms (8 MiB/s) | 1000 ms (16 MiB/s) | 1600 ms (10 MiB/s) | 1250 ms (13 MiB/s) | 0.80x | 0.50x |"),
        "{t}"
    );
    assert_eq!(parse_read("peer=L1 kind=read_ms run=0 ms=?"), None);
}

/// One run's IOMMU work: (VMM, map ms per GiB, unmap ms per GiB).
type DmaRun = (String, Option<u64>, Option<u64>);

/// One run's IOMMU work, from a `dmamap` marker: (VMM, map ms per GiB, unmap ms per GiB).
/// passvm's map time is its own `vmm_ms` (prefault, pin and map: it faults the RAM in
/// before its first map call, where the trace's span does not see it); a peer's is the
/// span of its map calls, inside which it faults the RAM in.
fn parse_dma(marker: &str) -> Option<DmaRun> {
    let kv: BTreeMap<&str, &str> = marker
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .collect();
    let num = |k: &str| kv.get(k).and_then(|v| v.parse::<u64>().ok());
    let per_gib = |ms: Option<u64>, mib: Option<u64>| match (ms, mib) {
        (Some(ms), Some(mib)) if mib > 0 => Some(ms * 1024 / mib),
        _ => None,
    };
    let map_ms = num("vmm_ms").or_else(|| num("map_ms"));
    // A span needs several calls: iommufd unmaps all RAM in one or two, whose time the
    // trace's timestamps do not show.
    let unmap_ms = num("unmap_ms").filter(|_| num("unmaps").is_some_and(|n| n > 2));
    Some((
        kv.get("peer")?.to_string(),
        per_gib(map_ms, num("map_mib")),
        per_gib(unmap_ms, num("unmap_mib")),
    ))
}

/// The DMA table: per VMM (its backend), the median map and unmap time per GiB.
fn dma_table(runs: &[DmaRun]) -> String {
    let mut vmms: Vec<&str> = Vec::new();
    for (v, _, _) in runs {
        if !vmms.contains(&v.as_str()) {
            vmms.push(v);
        }
    }
    let mut out = String::from("| DMA, ms per GiB (medians) | map | unmap |\n|---|---|---|\n");
    for v in vmms {
        let col = |f: &dyn Fn(&DmaRun) -> Option<u64>| {
            show(median(
                runs.iter().filter(|r| r.0 == v).filter_map(f).collect(),
            ))
        };
        out.push_str(&format!(
            "| {v} | {} | {} |\n",
            col(&|r| r.1),
            col(&|r| r.2)
        ));
    }
    out
}

#[test]
fn the_dma_table_takes_passvm_s_own_time_and_the_peers_spans_per_gib() {
    let runs: Vec<_> = [
        "peer=passvm case=big run=1 maps=204 map_mib=1536 map_at=5000 map_ms=6 unmaps=2 unmap_mib=1536 unmap_at=6000 unmap_ms=27 vmm_ms=3000",
        "peer=ch case=big run=1 maps=384 map_mib=1536 map_at=100 map_ms=4500 unmaps=386 unmap_mib=1536 unmap_at=6000 unmap_ms=600",
        "peer=ch case=blk run=1 maps=80 map_mib=256 map_at=100 map_ms=1000 unmaps=80 unmap_mib=256 unmap_at=3000 unmap_ms=100",
        "peer=qemu case=blk run=1 maps=0 map_mib=0 map_at=- map_ms=- unmaps=0 unmap_mib=0 unmap_at=- unmap_ms=-",
    ]
    .iter()
    .map(|m| parse_dma(m).unwrap())
    .collect();
    let t = dma_table(&runs);
    assert!(
        t.contains("| passvm | 2000 | - |"),
        "two unmap calls: no span"
    );
    // ch: 3000 and 4000 ms/GiB map, 400 and 400 unmap: the lower middle of two.
    assert!(t.contains("| ch | 3000 | 400 |"), "{t}");
    assert!(t.contains("| qemu | - | - |"), "{t}");
}

/// Benchmark (prints the table; asserts that every run happened and exited 0).
#[test]
#[ignore = "nested bed benchmark against QEMU and Cloud Hypervisor: resources/bed.sh bench --peers"]
fn bench_peers() {
    let out = Scenario::new("peers-bench")
        .l1(L1Kernel::Peers)
        .device(Device::blk("d0"))
        .device(Device::blk("d1"))
        .timeout(Duration::from_secs(3600))
        .run();
    out.assert_ok();
    let runs: Vec<Run> = out
        .markers("bench")
        .iter()
        .filter_map(|m| parse_run(m))
        .collect();
    let vmms = out.marker("vmms").unwrap_or("?");
    println!("peers-bench: VMMs {vmms}; L2 = the bed kernel (vmlinux), 1 vCPU, medians of each VMM's runs");
    for r in out.markers("bench") {
        println!("  {r}");
    }
    println!("{}", table(&runs));
    let reads: Vec<_> = out
        .markers("read")
        .iter()
        .filter_map(|m| parse_read(m))
        .collect();
    if !reads.is_empty() {
        println!("{}", read_table(&reads));
    }
    let dma: Vec<_> = out
        .markers("dmamap")
        .iter()
        .filter_map(|m| parse_dma(m))
        .collect();
    if !dma.is_empty() {
        for m in out.markers("dmamap") {
            println!("  {m}");
        }
        println!("{}", dma_table(&dma));
    }
    assert!(!runs.is_empty(), "no benchmark runs reported");
    let failed: Vec<&Run> = runs.iter().filter(|r| r.rc != "0").collect();
    assert!(failed.is_empty(), "runs that did not exit 0: {failed:#?}");
}
