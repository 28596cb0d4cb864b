//! Engine overhead per step: a workflow of 100 no-op steps, run end to end,
//! divided by 100.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use dspex_workflow::{Context, Node, RunOptions, Workflow};

fn engine(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    const STEPS: usize = 100;
    let mut workflow = Workflow::new("noop");
    for i in 0..STEPS {
        workflow = workflow.then(Node::step(&format!("s{i}"), |_scope| async {
            Ok(Context::new())
        }));
    }
    let mut group = c.benchmark_group("workflow");
    group.throughput(criterion::Throughput::Elements(STEPS as u64));
    group.bench_function("noop_steps_x100", |b| {
        b.to_async(&runtime).iter(|| async {
            workflow
                .run(Context::new(), RunOptions::default())
                .await
                .unwrap()
        });
    });
    group.finish();
}

criterion_group!(benches, engine);
criterion_main!(benches);
