//! hbm-device-plugin: advertises each passthrough-ready GPU together with its HBM regions as one
//! Kubernetes device.
