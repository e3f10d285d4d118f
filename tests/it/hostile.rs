//! Hostile inputs: one test per rule; each must exit 2 naming the file, tensor and field, and write nothing.
