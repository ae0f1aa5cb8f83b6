//! Throwaway PostgreSQL (being built).
