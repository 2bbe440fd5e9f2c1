-- The reference design's source table, typed as the data set is: product and transaction
-- numbers stay text (real data has `85123A` and `C536379`), customers may be missing.
CREATE TABLE IF NOT EXISTS public.onlineshop (
    id            serial PRIMARY KEY,
    transactionno text    NOT NULL,
    date          date    NOT NULL,
    productno     text    NOT NULL,
    productname   text    NOT NULL,
    price         numeric(12,2) NOT NULL,
    quantity      integer NOT NULL,
    customerno    text,
    country       text    NOT NULL
);
