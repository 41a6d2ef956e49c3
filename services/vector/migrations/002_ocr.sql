-- OCR (services/vector/ocr.py): the pages of each finished item read by OCR, and every OCR
-- reading of a document as soon as it is made (a resumed item reads it back, never twice).
ALTER TABLE {schema}.items ADD COLUMN IF NOT EXISTS pages_ocr integer NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS {schema}.ocr_pages (
    document_id text NOT NULL,
    page        integer NOT NULL CHECK (page > 0),
    text        text NOT NULL,
    confidence  real NOT NULL,
    PRIMARY KEY (document_id, page)
);
ALTER TABLE {schema}.ocr_pages OWNER TO {role};
