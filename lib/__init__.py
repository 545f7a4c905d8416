"""The API's library, by layer: web over ops and domain, over cache, over edge, over the ground modules here."""
