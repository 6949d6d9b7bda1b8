//! Host device discovery and assignability checks (OWNER: discovery helper).
