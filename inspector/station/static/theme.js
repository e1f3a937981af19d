// Before the page is drawn: the theme the operator chose on this PC (none: the system's).
"use strict";
document.documentElement.dataset.theme = localStorage.getItem("sise-theme") || "";
