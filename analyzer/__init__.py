"""stirscope.analyzer: captures and live sources -> SIP messages -> calls -> verdicts -> reports."""
