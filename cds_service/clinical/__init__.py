"""The record read clinically, as facts for the rules: lab results in canonical units, code systems,
the products and drug groups of rules/, the order being checked against the dose history."""
