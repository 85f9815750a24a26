"""Why it breaks: int32 and memory preflight (``preflight``), the leak verdict and its attribution
(``leak``), failure classes (``failures``) and the leak anti-patterns with clean twins (``scenarios``)."""
