"""Reports: error analysis, the HTML error report, plots and the web fonts they embed."""
