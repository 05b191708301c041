//! Checks of the deployment files under `deploy/` (the tests are in `tests/manifests.rs`):
//! every Kubernetes object of the base and of each rendered overlay deserialized strictly into
//! the `k8s-openapi` types, the references between objects (selectors, ports, volumes,
//! ConfigMaps), and every `TIDELINE_*` variable the manifests set parsed by the command line of
//! the binary the container runs. Needs no cluster and no `kubectl` (which, when present, also
//! checks that the committed renders in `deploy/k8s/rendered/` are current).
