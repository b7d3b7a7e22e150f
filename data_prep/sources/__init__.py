"""Text sources beyond gettext catalogues, each read from unpacked Debian packages into TextUnits.

  libreoffice_help  LibreOffice help pages: paragraphs aligned with English by (file, paragraph id);
                    labelled by application module (parallel text and a classification set)
  fortunes          fortune cookie files: one text per entry (monolingual)
  manpages          translated manual pages: prose sentences (monolingual), labelled by section

Each module has PACKAGES ({lang: Debian package}), packages(languages), and a reader
read_*(roots, languages, map_fn=map) -> (units, dropped) whose per-file work is a pure, picklable function
so that a process pool's map can run it. `unit` in every TextUnit is the unit to split by.
"""
