//! `crds/*.yaml` must be what the types generate today.

use std::path::Path;

use tartan_crds::generate::{crds, render};

#[test]
fn committed_crd_yaml_matches_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in crds() {
        let path = dir.join(file.file_name);
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let generated = render(&file.crd).expect("renders");
        assert!(
            committed == generated,
            "{} is stale: the API types changed. Regenerate with\n    \
             cargo run -p tartan-crds -- write crds\nand commit the result.",
            path.display()
        );
    }
}
