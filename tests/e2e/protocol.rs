//! Protocol refusals over real mTLS.
