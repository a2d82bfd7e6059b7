"""cd20-cds: a CDS Hooks 2.0 service for order-time safety checks on anti-CD20 therapy in MS."""
