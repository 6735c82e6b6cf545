//! Front-end figures (filled in below as the front ends land).
use criterion::{Criterion, criterion_group, criterion_main};

fn encode(c: &mut Criterion) {
    c.bench_function("claims/encode_region_id", |b| {
        b.iter(|| hbm_hook::claims::encode_region_id(std::hint::black_box("0000:c1:00.0/node2")))
    });
}

criterion_group!(benches, encode);
criterion_main!(benches);
