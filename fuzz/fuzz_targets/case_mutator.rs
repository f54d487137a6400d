//! The live fuzzer's own mutator: any list of mutations (the very `Mutation` values the
//! campaign draws) applied to a seed never panics and never grows a case past MAX_CASE_LEN, and
//! a case always concatenates to what its spans say.
#![no_main]
use arbitrary::Arbitrary;
use fakejvm::fuzz::case::Case;
use fakejvm::fuzz::mutate::{apply, Context, Mutation, MAX_CASE_LEN};
use fakejvm::fuzz::seeds::Seed;
use fakejvm::protocol::{DataItem, TaskRequest};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: fakejvm_fuzz::CappedAlloc = fakejvm_fuzz::CappedAlloc;

#[derive(Arbitrary, Debug)]
struct Input {
    dialect: u8,
    mutations: Vec<Mutation>,
}

fn seed(d: fakejvm::protocol::Dialect, i: usize) -> Seed {
    let mut req = TaskRequest::non_udf("3.11", vec![0x80, 5, 0x4e, 0x2e], vec![DataItem::Frame(b"abc".to_vec()), DataItem::Null, DataItem::Frame(vec![])]);
    req.context.local_properties = vec![("k".into(), "v".into())];
    req.includes = vec!["x.zip".into()];
    Seed { name: format!("s{i}"), case: Case::from_encoded(Some(i), &d.encode_request(&req)), request: Some(req), round_trip: None }
}

fuzz_target!(|input: Input| {
    let d = fakejvm_fuzz::dialect(input.dialect);
    let seeds = [seed(d, 0), seed(fakejvm::protocol::Dialect::A, 1)];
    let ctx = Context { dialect: d, seeds: &seeds, mutate_command: true };
    let mut case = seeds[0].case.clone();
    for m in input.mutations.iter().take(64) {
        apply(&mut case, m, &ctx);
        assert!(case.len() <= MAX_CASE_LEN);
        let spans = case.spans();
        assert_eq!(spans.last().map(|s| s.end).unwrap_or(0), case.to_bytes().len());
    }
});
