// Generated from shared/vocabulary.py by `python -m tests.support.ui_vocabulary`: do not edit.
// tests/unit/api/test_ui_vocabulary.py fails while this file differs from what that writes.

// A document's status.
export const STATUSES = ['queued', 'processing', 'ready', 'failed', 'deleting'];

// A processing document's stage, in the order the processor goes through them.
export const STAGES = ['downloading', 'extracting', 'chunking', 'embedding', 'indexing'];
