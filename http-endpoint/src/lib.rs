//! heapprof-http: the debug endpoint (work in progress).
