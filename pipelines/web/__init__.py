"""The browser pages of ppmtrack label / review (optional extra: pip install 'ppmtrack[ui]')."""
