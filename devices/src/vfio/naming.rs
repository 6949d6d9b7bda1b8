//! Every `--device` form resolved to a device (OWNER: discovery helper).
