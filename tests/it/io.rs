//! Reading and writing checkpoint folders: inspect, reshard, manifests, atomicity, determinism.
