"""Chrome/Kineto JSON reading: the byte source (plain, gzip, mmap), the fast typed
decoder and the careful reference decoder. Both decoders fill the same
:class:`ckprof.trace._build.Columns`; :mod:`ckprof.trace.load` picks between them."""
