//! Real binaries: coordinator + nodes over mTLS on loopback.
